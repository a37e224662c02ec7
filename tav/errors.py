"""tav's exception types: ``InputError`` for bad user input, ``NonFiniteLossError`` for a diverged training run,
``NonFiniteOutputError`` for a sampler whose output is not finite."""


class InputError(ValueError):
    """Bad input from the user. The message names the file or option and says what to do."""


class NonFiniteLossError(RuntimeError):
    """A training loss became NaN or infinite; the message names the global step and the last good checkpoint."""


class NonFiniteOutputError(RuntimeError):
    """A sampler's output holds NaN or infinite values; the message names the sample (nothing of it is written)."""
