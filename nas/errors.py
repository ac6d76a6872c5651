"""The one exception type for bad user input."""

from __future__ import annotations


class NasError(ValueError):
    """Bad user input (config, data, CLI, storage, a user's space).

    The message is one sentence that names the thing that is wrong and how to fix it. The CLI
    prints it on one line and exits with code 2; library users get an ordinary ``ValueError``.
    """
