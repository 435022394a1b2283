"""The one error type users see. Every message says what was wrong and what to do."""


class EdgestackError(Exception):
    """A failure caused by user input or environment, with a message that names the fix."""
