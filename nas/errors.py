"""The one exception type for bad user input."""

from __future__ import annotations


class NasError(ValueError):
    """Bad user input (config, data, CLI, storage, a user's space).

    The message is one sentence that names the thing that is wrong and how to fix it. The CLI
    prints it on one line and exits with code 2; library users get an ordinary ``ValueError``.
    """


class NasWarning(UserWarning):
    """Something the user should know that does not stop the command (a repaired study file,
    a damaged one read as far as it is intact). The CLI prints it as one ``warning:`` line."""
