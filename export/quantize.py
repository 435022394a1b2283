"""`edgestack quantize`: static int8 Q/DQ ONNX (`model.int8.onnx`) + its parity vs fp32, recorded in the bundle.

onnxruntime's static quantization calibrates the portable ONNX on real images (preprocessed exactly as the
runtime does) or, without a folder, on synthetic ones. Activations and weights are symmetric int8 (weights
per channel) and biases stay float: the form TensorRT's explicit quantization accepts, so the one Q/DQ model
serves onnxruntime int8 on CPU and `edgestack build --precision int8`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgestack import bundle as bundle_format
from edgestack.errors import EdgestackError
from edgestack.export import parity
from edgestack.runtime.images import IMAGE_SUFFIXES, read_image, to_tensor

# The ops whose int8 kernels carry the speed-up on onnxruntime CPU and TensorRT; the rest stays float.
QUANTIZED_OPS = ["Conv", "ConvTranspose", "MatMul", "Gemm"]
EVAL_IMAGES = 4
FEW_CALIBRATION_IMAGES = 16  # fewer rarely span a line's parts: int8 then clips what they did not show


class _Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def synthetic_images(count: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """Smooth colour fields with rectangles and noise: image-like statistics, not a substitute for real data."""
    rng = np.random.default_rng(seed)
    height, width = size
    images = []
    for _ in range(count):
        grid = rng.uniform(0, 255, (int(rng.integers(2, 8)), int(rng.integers(2, 8)), 3)).astype(np.float32)
        image = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        for _ in range(int(rng.integers(1, 5))):
            y0, x0 = rng.integers(0, height), rng.integers(0, width)
            y1, x1 = y0 + rng.integers(4, height // 2 + 5), x0 + rng.integers(4, width // 2 + 5)
            image[y0:y1, x0:x1] = rng.uniform(0, 255, 3)
        image += rng.normal(0, 8, image.shape).astype(np.float32)
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return images


def folder_images(folder: Path, count: int, size: tuple[int, int], bit_depth: int | None = None) -> list[np.ndarray]:
    """Up to `count` images of a folder (sorted by name), resized to size (grayscale replicated to RGB; 16-bit
    files of a `bit_depth`-bit camera scaled as inspect scales them)."""
    if not folder.is_dir():
        raise EdgestackError(f"--calib {folder} is not a folder; give a folder of representative images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if not paths:
        raise EdgestackError(f"--calib {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return [cv2.resize(read_image(p, gray_to_rgb=True, bit_depth=bit_depth), (size[1], size[0]),
                       interpolation=cv2.INTER_AREA) for p in paths]


def model_feeds(bundle: Path, meta: dict[str, Any], images: list[np.ndarray], seed: int
                ) -> list[dict[str, np.ndarray]]:
    """One feed per image: the first input is the preprocessed image; an inpainting `mask` gets random holes,
    and MAT's latent, mixing masks and noise are drawn as `edgestack inpaint` draws them."""
    rng = np.random.default_rng(seed)
    first, *others = meta["inputs"]
    mat_weights = None  # MAT's noise_const maps, for its latent, mixing masks and noise
    if meta["model"]["name"] == "mat":
        from safetensors.numpy import load_file

        from edgestack.models.mat import seeded_inputs

        mat_weights = load_file(str(bundle / bundle_format.WEIGHTS))
    feeds = []
    for index, image in enumerate(images):
        feed = {first["name"]: to_tensor(image, meta["preprocess"])}
        extras = {} if mat_weights is None else {
            name: t.numpy()
            for name, t in seeded_inputs(meta["model"]["settings"], mat_weights, 1, seed + index).items()}
        for spec in others:
            if spec["name"] in extras:
                feed[spec["name"]] = extras[spec["name"]]
            elif spec["name"] == "mask":
                mask = np.ones((1, 1, *image.shape[:2]), np.float32)  # 1 valid, 0 hole
                for _ in range(int(rng.integers(1, 4))):
                    y, x = rng.integers(0, image.shape[0]), rng.integers(0, image.shape[1])
                    mask[..., y:y + image.shape[0] // 3, x:x + image.shape[1] // 3] = 0
                feed[spec["name"]] = mask
            else:
                raise EdgestackError(f"cannot make calibration data for input {spec['name']!r}; only image and mask")
        feeds.append(feed)
    return feeds


@bundle_format.changes_bundle
def quantize(
    bundle: str | Path,
    calib: str | Path | None = None,
    samples: int = 32,
    size: tuple[int, int] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] = print,
    bit_depth: int | None = None,
) -> dict[str, Any]:
    """Write `model.int8.onnx` into the bundle; returns its meta.json record (meta["int8"]). `bit_depth`: of the
    calibration folder's 16-bit camera images (as inspect --bit-depth)."""
    bundle = Path(bundle)
    meta = bundle_format.read_meta(bundle, verify=True)
    bundle_format.refuse_several_graphs(bundle, meta, "int8 calibration draws image and mask inputs only, and these "
                                                      "graphs feed each other; run this model in fp32 or fp16")
    if samples < 1:
        raise EdgestackError(f"--samples {samples} must be at least 1")
    size = tuple(size or meta["default_size"])
    for axis, value in zip(("height", "width"), size):
        problem = bundle_format.axis_problem(meta, axis, value)
        if problem:
            raise EdgestackError(f"calibration size {size[0]}x{size[1]}: {problem}; choose another --size")

    if calib is None:
        if bit_depth is not None:
            raise EdgestackError("--bit-depth is for a --calib folder of 16-bit camera images; pass --calib too")
        images = synthetic_images(samples, size, seed)
        eval_images, eval_source = synthetic_images(EVAL_IMAGES, size, seed + 1), "synthetic (other seed)"
        source = "synthetic images (no --calib folder given): scales fit made-up data; calibrate on real images"
        parity_on_calibration = False
    else:
        calib = Path(calib)
        images = folder_images(calib, samples + EVAL_IMAGES, size, bit_depth)
        # Held-out images for the parity figures when the folder has enough, else the calibration ones.
        held_out = images[samples:]
        images = images[:samples]
        eval_images = held_out or images[:EVAL_IMAGES]
        eval_source = f"{len(held_out)} held-out images of {calib}" if held_out else f"calibration images of {calib}"
        source = str(calib.resolve())
        parity_on_calibration = not held_out
    warnings = calibration_warnings(calib, len(images), parity_on_calibration, samples, meta["model"]["task"])
    for warning in warnings:
        progress(f"warning: {warning}")

    with tempfile.TemporaryDirectory(prefix="edgestack-quantize-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / bundle_format.INT8_ONNX
        progress("shape inference and graph pre-processing ...")
        portable = str((bundle / bundle_format.PORTABLE_ONNX).resolve())
        # When symbolic inference gives up, onnxruntime saves sym_shape_infer_temp.onnx and its data into the
        # working folder: let that be the temporary one, not the user's.
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            # auto_merge: the symbolic sizes of a stride-32 encoder (repeated ceil(n/2) vs ceil(n/32)) are
            # equal but not provably so to onnxruntime, which otherwise gives up on defectseg; its warning
            # about each such merge would only alarm the user.
            logging.getLogger("onnxruntime.tools.symbolic_shape_infer").setLevel(logging.ERROR)
            quant_pre_process(portable, str(prepared), auto_merge=True)
        except Exception as exc:  # onnxruntime raises a bare Exception when symbolic inference fails
            progress(f"symbolic shape inference failed ({exc}); using ONNX shape inference only")
            quant_pre_process(portable, str(prepared), skip_symbolic_shape=True)
        finally:
            os.chdir(cwd)
        progress(f"calibrating on {len(images)} images at {size[0]}x{size[1]} ...")
        quantize_static(
            str(prepared),
            str(quantized),
            _Feeds(model_feeds(bundle, meta, images, seed)),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibration_providers=["CPUExecutionProvider"],
            # TensorRT takes symmetric int8 only (zero point 0) and fuses float biases itself. With float biases,
            # widening weight scales to fit an int32 bias is moot (and that step fails on MAT's 2-D biases).
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                           "QDQDisableWeightAdjustForInt32Bias": True},
        )
        progress("comparing int8 with fp32 on onnxruntime ...")
        figures = _compare(meta, bundle / bundle_format.PORTABLE_ONNX, quantized,
                           model_feeds(bundle, meta, eval_images, seed))
        qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in onnx.load(str(quantized)).graph.node)
        record = {
            "file": bundle_format.INT8_ONNX,
            "calibration": {"source": source, "samples": len(images), "size": list(size), "method": "MinMax"},
            "quantization": {"format": "QDQ", "activations": "int8 symmetric, per tensor",
                             "weights": "int8 symmetric, per channel", "bias": "float", "ops": QUANTIZED_OPS,
                             "qdq_nodes": qdq, "onnxruntime": onnxruntime.__version__},
            "parity_vs_fp32": {"images": len(eval_images), "source": eval_source, **figures},
            "warnings": warnings,
        }
        meta["int8"] = record
        # A plan built from the int8 model being replaced would run scales that meta.json no longer describes.
        stale_plan = meta.get("tensorrt", {}).get("source") == bundle_format.INT8_ONNX
        if stale_plan:
            del meta["tensorrt"], meta["files"][bundle_format.PLAN]
        # The int8 model and the meta.json that records it, both or neither (a full disk leaves the old ones).
        bundle_format.replace_files(bundle, meta, {bundle_format.INT8_ONNX: quantized})
    if stale_plan:
        (bundle / bundle_format.PLAN).unlink(missing_ok=True)
        progress(f"removed {bundle_format.PLAN}, built from the earlier int8 model; rebuild it with `edgestack build "
                 f"{bundle} --precision int8`")
    from edgestack.export.report import update_int8_section

    update_int8_section(bundle, meta)
    return record


def calibration_warnings(calib: Path | None, count: int, parity_on_calibration: bool, samples: int,
                         task: str) -> list[str]:
    """What makes an int8 model's figures weak evidence (kept in meta.json and report.md, and printed)."""
    warnings = []
    if calib is None:
        warnings.append("calibrated on synthetic images: the scales fit made-up data; calibrate on the line's own "
                        "images (--calib DIR)")
    elif count < FEW_CALIBRATION_IMAGES:
        warnings.append(f"calibrated on {count} images: so few rarely span a line's parts, and int8 clips what they "
                        f"did not show; calibrate on {FEW_CALIBRATION_IMAGES} or more, good and defective parts "
                        f"(--samples and the --calib folder)")
    if parity_on_calibration:
        warnings.append(f"int8 was compared with fp32 on its calibration images, which flatter it; give --calib more "
                        f"than --samples {samples} images so some are held out" + (
                            ", and check it with `edgestack eval defectseg --data DIR --bundle BUNDLE --tiled "
                            "--backend onnxruntime-int8` before deploying it" if task == "defect_segmentation" else ""))
    return warnings


def _compare(meta: dict[str, Any], fp32: Path, int8: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Both models on every feed, each output stacked over the feeds, compared once."""
    outputs = []
    for path in (fp32, int8):
        session = parity.onnx_session(str(path))
        runs = [session.run(None, feed) for feed in feeds]
        outputs.append([np.concatenate(output) for output in zip(*runs)])
    return parity.parity_vs_fp32(outputs[0], outputs[1], meta["model"]["task"])
