"""`mat`: large-hole inpainting with a mask-aware transformer (MAT, CVPR 2022; fenglinglwb/MAT).

Graph inputs (all float32; R = the config's resolution, fixed; batch dynamic):
  image       [B, 3, R, R]        RGB in [-1, 1]
  mask        [B, 1, R, R]        1 = valid pixel, 0 = hole (binary)
  z           [B, z_dim]          latent; default: seeded standard normal (`extra_inputs`)
  mix_stage1  [B, 256, dim]       stage-1 noise-mixing mask in {0, 1} (token-major, like the official
                                  mul_map); default: seeded Bernoulli(0.5), which is what the official
                                  `F.dropout(0.5 * ones, training=True)` draws on every call
  mix_stage2  [B, nf16, 16, 16]   stage-2 noise-mixing mask, same distribution
  noise       [B, sum r^2]        second-stage per-layer noise maps packed flat in decoder order
                                  (Dec_16x16.conv1, Dec_32x32.conv0, .conv1, ...); default: noise_mode
                                  "const" (the checkpoint's noise_const buffers, the official default)
Output: inpainted [B, 3, R, R] in about [-1, 1], holes filled, valid pixels copied from the input.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import torch

from edgestack.errors import EdgestackError
from edgestack.models.mat.checkpoint import load_checkpoint
from edgestack.models.mat.masks import random_masks
from edgestack.models.mat.model import MAT, MID_RES, MATConfig, noise_resolutions
from edgestack.models.registry import AxisRange, ModelSpec, TensorSpec, register

CONFIGS: dict[str, dict[str, Any]] = {
    # The paper's generator (Places/CelebA-HQ 512): 61.56M parameters; loads the official G_ema weights.
    "mat-512": asdict(MATConfig()),
    # The same generator at 256 px: the official CelebA-HQ 256 model ("specify resolution 256") loads here.
    "mat-256": asdict(MATConfig(resolution=256)),
    # Edge/CPU size, for tests and Jetson-class devices: 256 px, dim 60 / 6 heads, 2 blocks per stage,
    # 8x8 windows, a 128-d latent and an eighth-width Conv-U-Net (nf <= 64); 2.0M parameters, ~0.5 s per
    # image on 2 CPU cores (eager). Random weights unless trained.
    "mat-edge": asdict(MATConfig(resolution=256, dim=60, num_heads=6, depths=(2, 2, 2, 2, 2),
                                 window_sizes=(8, 8, 8, 8, 8), z_dim=128, w_dim=128, channel_base=4096,
                                 channel_max=64)),
}
NOISE_MODES = ("const", "random", "none")


def _cfg(config: dict[str, Any]) -> MATConfig:
    return MATConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def build(config: dict[str, Any]) -> MAT:
    return MAT(_cfg(config)).eval()


def noise_length(config: dict[str, Any]) -> int:
    return sum(r * r for r in noise_resolutions(config["resolution"]))


def _draws(cfg: MATConfig, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """z ~ N(0, 1) and the two mixing masks ~ Bernoulli(0.5), in that order."""
    z = torch.randn(batch, cfg.z_dim, generator=gen)
    mix1 = (torch.rand(batch, MID_RES * MID_RES, cfg.dim, generator=gen) < 0.5).float()
    mix2 = (torch.rand(batch, cfg.nf(4), MID_RES, MID_RES, generator=gen) < 0.5).float()
    return z, mix1, mix2


def noise_const_names(config: dict[str, Any]) -> list[str]:
    """State-dict names of the decoder's noise_const maps, in the order the `noise` input packs them."""
    sizes = noise_resolutions(config["resolution"])
    return [f"synthesis.dec.Dec_{MID_RES}x{MID_RES}.conv1.noise_const"] + [
        f"synthesis.dec.Dec_{r}x{r}.conv{k}.noise_const" for r in sizes[1::2] for k in (0, 1)
    ]


def seeded_inputs(
    config: dict[str, Any], weights: Mapping[str, Any], batch: int, seed: int = 0, noise_mode: str = "const"
) -> dict[str, torch.Tensor]:
    """The random parts of MAT as tensors drawn from `seed`: z, mix_stage1, mix_stage2, noise.

    noise_mode as the official generator's: "const" uses the noise_const maps in `weights` (a state dict, or
    the bundle's weights file read as arrays), "random" draws seeded normal noise, "none" zeros. The same seed
    always gives the same inputs, on any engine.
    """
    if noise_mode not in NOISE_MODES:
        raise EdgestackError(f"unknown noise_mode {noise_mode!r}; choose one of {', '.join(NOISE_MODES)}")
    gen = torch.Generator().manual_seed(seed)
    z, mix1, mix2 = _draws(_cfg(config), batch, gen)
    length = noise_length(config)
    if noise_mode == "const":
        maps = [torch.as_tensor(weights[name]).flatten() for name in noise_const_names(config)]
        noise = torch.cat(maps).expand(batch, length).clone()
    elif noise_mode == "random":
        noise = torch.randn(batch, length, generator=gen)
    else:
        noise = torch.zeros(batch, length)
    return {"z": z, "mix_stage1": mix1, "mix_stage2": mix2, "noise": noise}


def extra_inputs(model: MAT, batch: int, seed: int = 0, noise_mode: str = "const") -> dict[str, torch.Tensor]:
    """`seeded_inputs` for a built model (its own noise_const buffers)."""
    return seeded_inputs(asdict(model.cfg), model.state_dict(), batch, seed, noise_mode)


def example_inputs(config: dict[str, Any], batch: int, height: int, width: int) -> tuple[torch.Tensor, ...]:
    """A realistic free-form mask and seeded extras; seeds come from torch's global RNG (torch.manual_seed)."""
    res = config["resolution"]
    if (height, width) != (res, res):
        raise EdgestackError(f"MAT config runs at {res}x{res} only (got {height}x{width}); resize or pad the image")
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, res, res, generator=gen) * 2 - 1
    mask = random_masks(batch, res, seed=seed, hole_range=(0.1, 0.6))
    z, mix1, mix2 = _draws(_cfg(config), batch, gen)
    noise = torch.randn(batch, noise_length(config), generator=gen)
    return image, mask, z, mix1, mix2, noise


def inputs(config: dict[str, Any]) -> list[TensorSpec]:
    res, cfg = config["resolution"], _cfg(config)
    return [
        TensorSpec("image", ("batch", 3, res, res), doc="RGB in [-1, 1], NCHW"),
        TensorSpec("mask", ("batch", 1, res, res), doc="1 = valid, 0 = hole"),
        TensorSpec("z", ("batch", cfg.z_dim), doc="latent; default seeded standard normal"),
        TensorSpec("mix_stage1", ("batch", MID_RES * MID_RES, cfg.dim),
                   doc="stage-1 noise-mixing mask in {0,1}; default seeded Bernoulli(0.5)"),
        TensorSpec("mix_stage2", ("batch", cfg.nf(4), MID_RES, MID_RES),
                   doc="stage-2 noise-mixing mask in {0,1}; default seeded Bernoulli(0.5)"),
        TensorSpec("noise", ("batch", noise_length(config)),
                   doc="per-layer decoder noise packed flat; default the checkpoint's noise_const maps"),
    ]


register(
    ModelSpec(
        name="mat",
        task="inpainting",
        description="MAT: conv head (partial convs), 5 mask-aware transformer stages, style-modulated conv "
                    "tail, second-stage Conv-U-Net; random parts are explicit inputs",
        configs=CONFIGS,
        default_config="mat-512",
        build=build,
        example_inputs=example_inputs,
        inputs=inputs,
        outputs=lambda c: [TensorSpec("inpainted", ("batch", 3, c["resolution"], c["resolution"]),
                                      doc="inpainted RGB in [-1, 1]")],
        axes=lambda c: {"batch": AxisRange(1, 8)},
        default_size=lambda c: (c["resolution"], c["resolution"]),
        parity_sizes=lambda c: [(c["resolution"], c["resolution"])],
        preprocess={"layout": "NCHW", "color": "RGB", "scale": 1 / 127.5, "offset": -1.0,
                    "fixed_size": True, "mask": {"input": "mask", "valid": 1.0, "hole": 0.0}},
        postprocess=lambda c: {"kind": "inpainting", "output": "inpainted", "scale": 127.5, "offset": 127.5,
                               "clip": [0, 255]},
        load_checkpoint=load_checkpoint,
        extras={"extra_inputs": extra_inputs, "noise_modes": NOISE_MODES},
    )
)

__all__ = ["CONFIGS", "MAT", "MATConfig", "build", "example_inputs", "extra_inputs", "inputs", "noise_length",
           "seeded_inputs"]
