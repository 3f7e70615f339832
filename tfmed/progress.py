"""Progress lines for long steps (loading, feature extraction, training epochs).

Example:
    >>> log("extracting features")  # doctest: +SKIP
    [tfmed 10:15:02] extracting features
"""
from __future__ import annotations

import datetime as dt


def log(message: str) -> None:
    """Print a timestamped progress line, flushed at once."""
    print(f"[tfmed {dt.datetime.now():%H:%M:%S}] {message}", flush=True)
