"""Find and load libedgestack_kernels.so (the CUDA kernels' C ABI) through ctypes.

Search order: the EDGESTACK_KERNELS_LIB environment variable (path to the .so), then `build/` and `build-*/`
under the repository root (where `cmake -S . -B build && cmake --build build` puts it), then this folder.
No PyTorch in the library: tensors cross as raw device pointers plus the current CUDA stream.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from pathlib import Path

from edgestack.errors import EdgestackError

LIBRARY_NAME = "libedgestack_kernels.so"
ENV_VAR = "EDGESTACK_KERNELS_LIB"

FLOAT32 = 0
FLOAT16 = 1

_p, _i, _f, _size = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_size_t
_SIGNATURES = {
    "edgestack_status_string": ([_i], ctypes.c_char_p),
    "edgestack_window_attention_check": ([_i] * 7, _i),
    "edgestack_window_attention": ([_p] * 6 + [_i] * 8 + [_f, _f, _p], _i),
    "edgestack_pyramid_pooling_check": ([_i] * 5 + [_p, _i], _i),
    "edgestack_pyramid_pooling_workspace_size": ([_i] * 3 + [_p, _i], _size),
    "edgestack_pyramid_pooling": ([_p] * 5 + [_size] + [_i] * 7 + [_p, _i, _i, _p], _i),
}


def candidates() -> list[Path]:
    """Where the library is looked for, in order."""
    found = []
    if os.environ.get(ENV_VAR):
        found.append(Path(os.environ[ENV_VAR]))
    root = Path(__file__).resolve().parent.parent
    found.append(root / "build" / LIBRARY_NAME)
    found.extend(sorted(root.glob(f"build-*/{LIBRARY_NAME}")))
    found.append(Path(__file__).resolve().parent / LIBRARY_NAME)
    return found


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded library with argtypes declared, or None when no build of it is found."""
    for path in candidates():
        if path.is_file():
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as error:
                message = f"{path} exists but does not load ({error}); rebuild it (see CMakeLists.txt)"
                raise EdgestackError(message) from error
            for name, (argtypes, restype) in _SIGNATURES.items():
                function = getattr(lib, name, None)
                if function is None:  # built from older sources than this checkout's
                    raise EdgestackError(f"{path} has no {name}: it was built from other sources than these; "
                                         "rebuild it (cmake --build build)")
                function.argtypes = argtypes
                function.restype = restype
            return lib
    if os.environ.get(ENV_VAR):
        raise EdgestackError(f"{ENV_VAR}={os.environ[ENV_VAR]} is not a file; point it at {LIBRARY_NAME}")
    return None


_disabled = False


def available() -> bool:
    """True when the library is loaded and not switched off by `disabled()`."""
    return not _disabled and library() is not None


@contextlib.contextmanager
def disabled():
    """Within this block the custom ops run their PyTorch references, also on CUDA (for comparisons)."""
    global _disabled
    previous, _disabled = _disabled, True
    try:
        yield
    finally:
        _disabled = previous


def check(status: int, what: str) -> None:
    """Raise EdgestackError for a non-zero status from the library."""
    if status != 0:
        message = library().edgestack_status_string(status).decode()
        raise EdgestackError(f"{what}: {message} (status {status})")


def dtype_code(dtype) -> int:
    """Library dtype code for a torch dtype (float32 / float16)."""
    import torch

    codes = {torch.float32: FLOAT32, torch.float16: FLOAT16}
    if dtype not in codes:
        raise EdgestackError(f"CUDA kernels take float32 or float16 tensors, got {dtype}; cast the inputs")
    return codes[dtype]
