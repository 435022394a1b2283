"""The one error type users see. Every message says what was wrong and what to do."""


class EdgestackError(Exception):
    """A failure caused by user input or environment, with a message that names the fix."""


class EngineOutputError(EdgestackError):
    """An engine gave an output no result can come from (NaN or Inf): the engine's fault, not the input's."""
