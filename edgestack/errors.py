"""The one error type users see. Every message says what was wrong and what to do."""

from pathlib import Path


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
