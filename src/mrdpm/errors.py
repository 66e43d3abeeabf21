"""The one exception type that user-facing failures raise."""

from __future__ import annotations

from pathlib import Path


class MrdpmError(Exception):
    """A problem with the user's input (a file, an option, a configuration).

    Parameters
    ----------
    message
        What is wrong, in words a user can act on.
    path
        The file the problem was found in, if any; it is named first in the message.
    """

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)
