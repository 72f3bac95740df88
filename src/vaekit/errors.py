"""Errors a user can fix.

The command line prints a :class:`VaekitError` as one line and exits with status 2; any other
exception is a bug and keeps its traceback. ``VaekitError`` is a ``ValueError`` so library callers
can catch bad input the ordinary way.
"""


class VaekitError(ValueError):
    """A problem with the user's input: the message names the problem and how to fix it."""


class ConfigError(VaekitError):
    """A config file or ``--set`` override that cannot be used."""


class DataError(VaekitError):
    """A data set that cannot be found or read."""


class DivergenceError(VaekitError):
    """Training went non-finite (a loss term, the gradient or the weights): the message names the
    step and the likely cause; the last checkpoint is left as it was."""


class NoPriorError(VaekitError, Warning):
    """A model asked to sample that has no prior to sample from (a VQ-VAE without a prior over codes).

    It is also a ``Warning``: PyTorch-VAE's experiment calls ``model.sample`` inside
    ``try: … except Warning: pass``, since its own models raise ``Warning`` there.
    """


class IgnoredArgumentWarning(UserWarning):
    """A keyword argument a model accepted for compatibility but does not use (a typo, perhaps)."""
