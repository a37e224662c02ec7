"""The one exception type for bad user input (files, options, checkpoints)."""


class InputError(ValueError):
    """Bad input from the user. The message names the file or option and says what to do."""
