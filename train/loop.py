"""`edgestack train defectseg`: AdamW + cosine schedule, structure loss, checkpoints, resume, curves.

Checkpoints (`last.pt` every epoch, `best.pt` at the best validation S-measure) are plain dicts of
tensors and builtins — state_dict, config name, epoch, optimizer, scheduler, metrics, history — so
`torch.load(path, weights_only=True)` reads them and edgestack.models.checkpoints loads their weights.
"""

from __future__ import annotations

import io
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgestack.bundle import write_atomic
from edgestack.errors import EdgestackError, EngineOutputError, make_folder
from edgestack.models import resolve
from edgestack.models.checkpoints import read_checkpoint
from edgestack.train.datasets import load_datasets, seed_worker
from edgestack.train.losses import boundary_weight, structure_loss
from edgestack.train.metrics import DefectMetrics


def progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}"))


def evaluate(model: torch.nn.Module, loader: torch.utils.data.DataLoader, device: str = "cpu") -> dict[str, float]:
    """Benchmark + image-level figures of `model` on a loader of (image, mask) batches at training size."""
    metrics = DefectMetrics()
    model.eval()
    with torch.no_grad():
        for images, masks in loader:
            probs = model(images.to(device)).cpu()
            for prob, mask in zip(probs[:, 0].numpy(), masks[:, 0].numpy()):
                metrics.update(prob, (mask * 255).astype(np.uint8) if mask.any() else None)
    return metrics.results()


def plot_curves(history: list[dict[str, Any]], path: Path, keys: tuple[str, ...], loss_name: str) -> None:
    """Training loss (log) and validation figures per epoch; a key "NAME xK" plots NAME scaled by K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["loss"] for h in history], marker="o")
    left.set(title=f"training loss ({loss_name})", xlabel="epoch", yscale="log")
    for key in keys:
        name, _, factor = key.partition(" x")
        scale = float(factor) if factor else 1.0
        right.plot(epochs, [h["val"].get(name, float("nan")) * scale for h in history], marker="o", label=key)
    right.set(title="validation", xlabel="epoch", ylim=(0, 1))
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def training_device(device: str | None) -> str:
    """`device`, or CUDA when available; a clear error for a CUDA device this torch cannot use."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EdgestackError(f"--device {device}: this torch has no CUDA device; pass --device cpu")
    return device


def require_native_bf16(device: str) -> None:
    """Refuse bfloat16 autocast where bf16 math is emulated (x86 CPUs without AVX512-BF16 or AMX, GPUs before
    Ampere): there it is several times slower than fp32 (a defectseg training step 6-9x slower on an AVX2-only EPYC)."""
    if device.startswith("cuda"):
        with torch.cuda.device(device):  # the probe reads the current device; ask about the one we train on
            native = torch.cuda.is_bf16_supported(including_emulation=False)
    elif platform.machine().lower() in ("x86_64", "amd64"):
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    else:
        return  # Arm CPUs: torch has no probe for their bf16 extensions; trust the user's flag
    if not native:
        raise EdgestackError(f"--bf16: {device_name(device)} has no native bfloat16 math (AVX512-BF16/AMX on a CPU, "
                             "Ampere or newer on a GPU), so autocast would be emulated and several times slower than "
                             "fp32; drop --bf16")


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


def shuffled_loader(dataset, batch_size: int, generator: torch.Generator, workers: int, device: str,
                    worker_init_fn=None) -> torch.utils.data.DataLoader:
    """The training loader: shuffled full batches, `workers` > 1 loading processes (kept across epochs),
    pinned memory when training on CUDA."""
    loading = {"num_workers": workers, "persistent_workers": True, "worker_init_fn": worker_init_fn} if workers > 1 \
        else {}
    return torch.utils.data.DataLoader(dataset, batch_size, shuffle=True, drop_last=True, generator=generator,
                                       pin_memory=device.startswith("cuda"), **loading)


def run_folder(out: str | Path, resume: bool) -> tuple[Path, Path]:
    """(run folder, its last.pt), refusing to overwrite a run unless resuming and to resume nothing."""
    out = Path(out)
    last = out / "last.pt"
    if last.exists() and not resume:
        raise EdgestackError(f"{last} exists; pass --resume to continue that run or choose another --out")
    if resume and not last.exists():
        raise EdgestackError(f"--resume: no {last} to resume from; drop --resume to start a new run")
    make_folder(out, "run folder")
    return out, last


def cosine_schedule(optimizer: torch.optim.Optimizer, steps: int, max_warmup: int, warmup_fraction: float):
    """Per-step LR factor: linear warm-up over min(max_warmup, fraction of steps), then cosine down to 1%."""
    warmup = max(1, min(max_warmup, int(steps * warmup_fraction)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / warmup if s < warmup else (
        0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))))


def save_checkpoint_file(checkpoint: dict[str, Any], path: Path) -> None:
    """torch.save, whole or not at all: a stop (Ctrl-C, SIGTERM) or a full disk mid-save must not leave a
    damaged last.pt in place of the run's previous epochs."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    write_atomic(path, buffer.getbuffer())


def run_state(last: Path, config_name: str) -> dict[str, Any]:
    """A run's saved state (last.pt), refused when it is damaged, not a run's state, or of another config."""
    state = read_checkpoint(last)  # a damaged file is a one-line error naming it
    if not isinstance(state, dict) or not {"state_dict", "config", "epoch", "optimizer"} <= state.keys():
        raise EdgestackError(f"{last} is not the state of an edgestack training run (no config, epoch and optimizer "
                             "state); start a new run with another --out")
    if state.get("config") != config_name:
        raise EdgestackError(f"{last} is a {state.get('config')} run; pass {state.get('config')} to resume it")
    return state


def check_epochs_left(epochs: int, done: int, out: Path) -> None:
    """Refuse a run that has nothing left to train: --epochs at most the `done` epochs `out` already holds."""
    if epochs <= done:
        raise EdgestackError(f"nothing to train: --epochs {epochs}" + (
            f", and {out} already holds {done} epoch(s); pass --epochs {done + 1} or more to go on" if done else
            "; pass 1 or more"))


# Options a resumed run may change: --epochs (to train longer), where and how fast the same steps run (device,
# bf16 autocast; --threads and --workers are not recorded), and --init (the weights come from last.pt: a resume
# need not repeat it). Any other change (data, size, batch size, lr, ...) would make one run of two setups, and
# the restored optimizer and schedule would ignore a new --lr.
RESUME_MAY_CHANGE = ("epochs", "device", "bf16", "init")
BEFORE_RECORDED = {"native_scale": False}  # options a run made before they existed ran with


def starting_state(last: Path, config_name: str, args: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """Checked before any data is loaded: with `resume`, last.pt's state, refused when its config or options
    (`args`, as run_epochs records them) differ but for RESUME_MAY_CHANGE; None for a new run. Either way
    refused when --epochs leaves nothing to train."""
    state = None
    if resume:
        state = run_state(last, config_name)
        saved = state.get("args", {})  # an option an older run did not record: as it ran then, or unchanged
        saved = {key: saved.get(key, BEFORE_RECORDED.get(key, value)) for key, value in args.items()}
        changed = [f"{key} {saved[key]} -> {value}" for key, value in args.items()
                   if key not in RESUME_MAY_CHANGE and saved[key] != value]
        if changed:
            raise EdgestackError(f"--resume: {last} was trained with other options ({'; '.join(changed)}); resume "
                                 "it with the run's own options, or start a new run with another --out")
    check_epochs_left(args["epochs"], state["epoch"] if state else 0, last.parent)
    return state


def check_full_batch(count: int, batch_size: int, data: str) -> None:
    """Refuse fewer training samples than one batch: the loader drops incomplete batches, so no step is taken."""
    if count < batch_size:
        raise EdgestackError(f"{count} training images are fewer than --batch-size {batch_size}; lower --batch-size "
                             "or " + ("raise --synthetic-count" if data == "synthetic" else "add images"))


def check_finite_loss(loss: torch.Tensor, epoch: int, parts: dict[str, torch.Tensor] | None = None) -> None:
    """Stop a diverged run at its first non-finite loss, before its step writes NaN into the weights (and into
    last.pt/best.pt); `parts`: the loss's terms, shown in the message."""
    if not torch.isfinite(loss):
        figures = {key: float(value) for key, value in (parts or {}).items()}
        raise EdgestackError(f"non-finite training loss at epoch {epoch}" + (f" ({figures})" if figures else "")
                             + "; lower --lr")


def random_state(loader: torch.utils.data.DataLoader) -> dict[str, Any]:
    """Where the run's random streams stand: torch's (flips, dropout), the loader's shuffling generator and, when
    batches load in this process, the dataset's augmentation stream. Restored on --resume, so a resumed run goes
    on with the next epoch's batches instead of repeating the first epoch's shuffles and augmentations."""
    state = {"torch": torch.get_rng_state(), "loader": loader.generator.get_state()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if isinstance(getattr(loader.dataset, "rng", None), np.random.Generator):
        state["dataset"] = loader.dataset.rng.bit_generator.state
    return state


def restore_random_state(state: dict[str, Any], loader: torch.utils.data.DataLoader) -> None:
    torch.set_rng_state(state["torch"])
    loader.generator.set_state(state["loader"])
    if "cuda" in state and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "dataset" in state and isinstance(getattr(loader.dataset, "rng", None), np.random.Generator):
        loader.dataset.rng.bit_generator.state = state["dataset"]


def resume_run(
    last: Path, state: dict[str, Any], model, optimizer, schedule, loader, log
) -> tuple[list[dict[str, Any]], int, float]:
    """Load model/optimizer/schedule state and the random streams (random_state's) from `state` (starting_state's,
    of `last`); returns (history, first epoch to run, best score)."""
    model.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["scheduler"])
    if "random" in state:  # a run saved before the streams were recorded goes on from fresh ones
        restore_random_state(state["random"], loader)
    log(f"resumed {last} at epoch {state['epoch']}")
    return state["history"], state["epoch"] + 1, state["best"]


def run_epochs(
    model, optimizer, schedule, loader, batch_loss, validate, score, *, epochs: int, first_epoch: int,
    history: list[dict[str, Any]], best: float, out: Path, last: Path, config_name: str, args: dict[str, Any],
    describe, curve_keys: tuple[str, ...], loss_name: str, clip_grad: float | None = None, log=print,
) -> list[dict[str, Any]]:
    """The epoch loop both trainers share: optimise `batch_loss(batch)` over `loader`, then `validate()`; write
    OUT/last.pt every epoch, best.pt when `score(val)` improves, and curves.png; stop at a non-finite loss.
    Returns the history."""
    for epoch in range(first_epoch, epochs + 1):
        model.train()
        epoch_start, losses = time.perf_counter(), []
        with progress_bar() as bar:
            task = bar.add_task(f"epoch {epoch}/{epochs}", total=len(loader), status="")
            for batch in loader:
                loss = batch_loss(batch)
                check_finite_loss(loss, epoch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                bar.update(task, advance=1, status=f"loss {np.mean(losses[-20:]):.4f}")
        try:
            val = validate()
        except EngineOutputError:  # assess refused a NaN map: the last steps overflowed the weights, though their
            # losses were finite (seen at --lr 1e6: weights of 1e28 give inf in eval mode)
            raise EdgestackError(f"the model's output is non-finite after epoch {epoch}: training diverged; lower "
                                 "--lr") from None
        seconds = time.perf_counter() - epoch_start
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val": val, "seconds": round(seconds, 1)})
        log(f"epoch {epoch}: loss {np.mean(losses):.4f}  {describe(val)}  ({seconds:.0f} s)")
        value = score(val)
        improved, best = value > best, max(best, value)
        checkpoint = {
            "state_dict": model.state_dict(), "config": config_name, "epoch": epoch, "metrics": val,
            "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(), "history": history,
            "best": best, "args": args, "random": random_state(loader),
        }
        if improved:  # before last.pt, which records this epoch as the best: a stop between them must not lose it
            save_checkpoint_file(checkpoint, out / "best.pt")
        save_checkpoint_file(checkpoint, last)
        plot_curves(history, out / "curves.png", keys=curve_keys, loss_name=loss_name)
    return history


def train(
    model_name: str = "defectseg",
    config: str | None = None,
    data: str = "synthetic",
    out: str | Path = "runs/defectseg",
    epochs: int = 8,
    batch_size: int = 16,
    size: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    synthetic_count: int = 3000,
    val_fraction: float = 0.1,
    seed: int = 0,
    resume: bool = False,
    init: str | Path | None = None,
    threads: int = 2,
    device: str | None = None,
    workers: int = 1,
    bf16: bool = False,
    bit_depth: int | None = None,
    native_scale: bool = False,
    log=lambda message: print(message, flush=True),  # flushed: runs are often logged to a file
) -> dict[str, Any]:
    """Train; returns the final summary (also written to OUT/summary.json).

    `init`: start from these weights (a checkpoint, a .safetensors, or "shipped": the config's own) instead of random
    ones: fine-tuning on a line's own images converges far faster than training from scratch. `device` defaults to
    CUDA when available; `workers` processes generate the synthetic samples and load batches. `bf16`: bfloat16
    autocast for the forward pass (weights, optimizer and loss stay fp32), ~1.6x faster on CPUs with AVX512-BF16 or
    AMX and on Ampere+ GPUs, refused elsewhere (emulated, it is slower than fp32); validation and the checkpoints
    are fp32. `bit_depth`: of the folder's 16-bit camera images (as inspect --bit-depth). `native_scale`: train on
    `size` x `size` windows of the folder's images at their own scale (as inspect tiles them), not on the images
    resized to `size`."""
    spec, config_name = resolve(model_name, config)
    if spec.name != "defectseg":
        raise EdgestackError(f"`edgestack train` supports defectseg only, not {spec.name!r}")
    if size < 32 or size % 32:
        raise EdgestackError(f"--size must be a positive multiple of 32 (the encoder stride), got {size}")
    device = training_device(device)
    if bf16:
        require_native_bf16(device)
    if init == "shipped":
        init = spec.extras.get("default_checkpoint", {}).get(config_name)
        if not init or not Path(init).is_file():
            raise EdgestackError(f"--init shipped: {config_name} has no shipped weights; pass a checkpoint path")
    out, last = run_folder(out, resume)
    args = {"data": data, "size": size, "batch_size": batch_size, "lr": lr, "epochs": epochs,
            "weight_decay": weight_decay, "synthetic_count": synthetic_count, "seed": seed,
            "init": None if init is None else str(init), "device": device_name(device), "bf16": bf16,
            "native_scale": native_scale}
    state = starting_state(last, config_name, args, resume)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)

    model = spec.build(spec.configs[config_name]).train()
    if init is not None and not resume:
        from edgestack.models.checkpoints import load_checkpoint

        load_checkpoint(model, init)
        log(f"initialised from {init}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    started = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("generating data" if data == "synthetic" else "reading data", total=None, status="")
        train_set, val_set, data_info = load_datasets(
            data, size, val_fraction, seed, synthetic_count,
            progress=lambda i, n: bar.update(task, completed=i, total=n), workers=workers, bit_depth=bit_depth,
            native_scale=native_scale,
        )
    log(f"data: {data_info['train']} train / {data_info['val']} val ({time.perf_counter() - started:.0f} s)"
        + (f"; skipped {len(data_info['skipped'])} files (see summary.json)" if data_info["skipped"] else ""))
    check_full_batch(data_info["train"], batch_size, data)
    # After the generation pool has forked: its processes never see a CUDA context. Channels-last (NHWC) is the
    # layout oneDNN and cuDNN convolve fastest; on this 2-core CPU it made a training step ~1.5x faster.
    model.to(device, memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(seed)
    train_loader = shuffled_loader(train_set, batch_size, generator, workers, device, seed_worker)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size)
    schedule = cosine_schedule(optimizer, epochs * len(train_loader), len(train_loader), 0.1)
    history, first_epoch, best = (resume_run(last, state, model, optimizer, schedule, train_loader, log) if state
                                  else ([], 1, -1.0))

    def batch_loss(batch) -> torch.Tensor:
        images, masks = batch
        images = images.to(device, non_blocking=True, memory_format=torch.channels_last)
        masks = masks.to(device, non_blocking=True)
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16):
            logits, aux = model(images)
        weight = boundary_weight(masks)  # both heads are scored against the same masks
        final, deep = structure_loss(logits.float(), masks, weight), structure_loss(aux.float(), masks, weight)
        return final + model.aux_weight * deep

    def score(val: dict[str, Any]) -> float:
        return val.get("S", val["accuracy"])  # a folder without positives has no S-measure

    history = run_epochs(
        model, optimizer, schedule, train_loader, batch_loss, lambda: evaluate(model, val_loader, device), score,
        epochs=epochs, first_epoch=first_epoch, history=history, best=best, out=out, last=last,
        config_name=config_name, log=log, curve_keys=("S", "wF", "accuracy", "MAE x10"),
        loss_name="structure loss + aux",
        describe=lambda val: f"val S {val.get('S', float('nan')):.4f}  MAE {val.get('MAE', float('nan')):.4f}  "
                             f"acc {val['accuracy']:.3f}", args=args,
    )
    train_seconds = sum(h["seconds"] for h in history)
    summary = {"config": config_name, "epochs": epochs, "train_seconds": round(train_seconds, 1),
               "best_val": max(history, key=lambda h: score(h["val"]))["val"],
               "final_val": history[-1]["val"], "data": data_info, "threads": threads,
               "device": device_name(device)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def ship_weights(checkpoint: str | Path, out: str | Path, card: dict[str, Any]) -> Path:
    """Write a training checkpoint's weights as fp16 .safetensors (half the size; the model loads them into
    fp32) plus a json card beside it with the training config, `card` (e.g. held-out metrics) and history."""
    from safetensors.torch import save

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state["state_dict"].items()}
    write_atomic(out, save(tensors))  # save_file makes it readable by its owner alone
    info = {"config": state["config"], "epoch": state["epoch"], "training": state["args"], "val": state["metrics"],
            "history": [{k: h[k] for k in ("epoch", "loss", "seconds")} | {"val": h["val"]}
                        for h in state["history"]]} | card
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return out
