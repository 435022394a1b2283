"""Holding Ctrl-C and SIGTERM (which the CLI turns into KeyboardInterrupt) over a block that must not stop
half-way."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


@contextmanager
def interrupts_held():
    """Ctrl-C and SIGTERM wait until the block ends: around onnxruntime running the plugins flavour (its custom
    nodes are Python functions called from C++, and a KeyboardInterrupt raised in one aborts the process), and
    around the renames that swap several files or folders into place, which must not stop half-way. Outside the
    main thread nothing can be held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, lambda number, frame: held.append(number)) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(held):  # now raised where Python can unwind
            signal.raise_signal(number)
