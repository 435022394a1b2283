"""The one error type users see. Every message says what was wrong and what to do."""

from pathlib import Path

import numpy as np


class EdgestackError(Exception):
    """A failure caused by user input or environment, with a message that names the fix."""


def make_folder(path: Path, what: str) -> None:
    """Create `path` (and its parents), or say in one line why the --out given cannot be one."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgestackError(f"cannot create the {what} {path}: {exc.strerror or exc}; choose another --out") from None


class EngineOutputError(EdgestackError):
    """An engine gave an output no result can come from (NaN or Inf): the engine's fault, not the input's."""


def check_finite_output(array: np.ndarray, what: str) -> None:
    """Refuse an engine's output holding NaN or Inf (an fp16 plan that overflowed, a damaged bundle): NaN compares
    false with every threshold, so it would pass as no defect, no detection or class 0, in silence."""
    non_finite = int(np.count_nonzero(~np.isfinite(array)))
    if non_finite:
        raise EngineOutputError(
            f"{what} holds {non_finite} NaN/Inf value(s) of {array.size}, so no result: the engine's output "
            "overflowed or the bundle is damaged; run it on onnxruntime, or rebuild a TensorRT plan with "
            "`edgestack build BUNDLE --precision fp32`")
