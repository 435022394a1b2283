"""The emulated kernel tests (the CUDA device code on CPU threads, kernels/common/emulate.h) once more, built with
the compiler's sanitizers: the CPU-side counterparts of compute-sanitizer's memcheck and racecheck, for
machines without a GPU.

- AddressSanitizer + UndefinedBehaviorSanitizer stop at the first access outside an input, output, workspace or
  shared-memory array, and at the first misaligned vector access (which faults on a GPU).
- ThreadSanitizer stops at the first data race between CUDA threads: shared memory written and read by
  different threads with no __syncthreads (or shuffle) between them. Lanes of a warp are separate threads here,
  as they are on Volta and later GPUs.

Each sanitizer's runtime must be loaded before Python for a library built with it to load, hence a child run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SANITIZER_ENV, host_compiler

TESTS = Path(__file__).parent

# -fsanitize value: (its runtime library, the options that make every report fatal)
SANITIZERS = {
    "address,undefined": ("libasan.so", {"ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"}),
    "thread": ("libtsan.so", {"TSAN_OPTIONS": "halt_on_error=1"}),
}


def runtime_library(name: str) -> str | None:
    compiler = host_compiler()
    if not compiler:
        return None
    path = subprocess.run([compiler, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.isfile(path) else None


@pytest.mark.slow
@pytest.mark.parametrize("sanitizer", SANITIZERS)
def test_emulated_kernels_pass_under_sanitizer(sanitizer):
    library, options = SANITIZERS[sanitizer]
    runtime = runtime_library(library)
    if not runtime:
        pytest.skip(f"needs a compiler with -fsanitize={sanitizer} ({library} not found)")
    env = os.environ | options | {"LD_PRELOAD": runtime, SANITIZER_ENV: sanitizer}
    tests = [str(TESTS / "test_pyramid_pooling.py"), str(TESTS / "test_window_attention.py")]
    # --capture=sys: a sanitizer writes its report to file descriptor 2 and exits, which pytest's fd capture hides.
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--capture=sys", *tests,
         "-k", "cpu_threads"],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    report = run.stdout[-4000:] + run.stderr[-8000:]
    assert run.returncode == 0, report
    summary = run.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary, report  # the kernels ran, not just the harness
