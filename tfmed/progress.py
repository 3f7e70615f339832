"""Progress lines for long steps (loading, feature extraction, training epochs), through ``logging``.

Library code logs to the ``"tfmed"`` logger at INFO level and prints nothing
itself. The command line calls :func:`configure_logging`, which shows each
line with a timestamp on standard output; call it yourself in a script or
notebook to see the same lines (or attach your own handler to ``"tfmed"``).

Example:
    >>> configure_logging()                # doctest: +SKIP
    >>> log("extracting features")        # doctest: +SKIP
    [tfmed 10:15:02] extracting features
"""
from __future__ import annotations

import logging
import sys

LOGGER = logging.getLogger("tfmed")
LOGGER.addHandler(logging.NullHandler())
FORMAT = "[tfmed %(asctime)s] %(message)s"
DATE_FORMAT = "%H:%M:%S"


def log(message: str) -> None:
    """Log one progress line (INFO) on the ``"tfmed"`` logger."""
    LOGGER.info(message)


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (so redirections and captures see it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def configure_logging(level: int = logging.INFO) -> logging.Handler:
    """Show tfmed's progress lines on standard output as ``[tfmed HH:MM:SS] message``.

    Calling it again does not add a second handler.

    Example:
        >>> handler = configure_logging()
        >>> configure_logging() is handler
        True
    """
    for handler in LOGGER.handlers:
        if isinstance(handler, _CurrentStdout):
            LOGGER.setLevel(level)
            return handler
    handler = _CurrentStdout()
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    LOGGER.addHandler(handler)
    LOGGER.setLevel(level)
    return handler
