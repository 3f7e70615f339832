"""The one base class of every error that a user of tfmed can fix (bad data, config, files), and
:func:`count_noun` for the counts its messages give.

The command line prints such an error as one line and exits with status 2; any
other exception is a bug and keeps its traceback. ``TfmedError`` subclasses
``ValueError`` so that code catching ``ValueError`` keeps working.

Example:
    >>> class ManifestProblem(TfmedError):
    ...     '''A manifest row is unusable.'''
    >>> isinstance(ManifestProblem("row 3: empty path"), TfmedError)
    True
"""
from __future__ import annotations


class TfmedError(ValueError):
    """A problem in the user's data, configuration or files, with a message saying how to fix it."""


def count_noun(number: int, noun: str) -> str:
    """``number`` and ``noun``, plural unless one.

    Example:
        >>> count_noun(1, "scan"), count_noun(3, "candidate")
        ('1 scan', '3 candidates')
    """
    return f"{number} {noun}{'' if number == 1 else 's'}"
