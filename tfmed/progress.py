"""Progress lines for long steps (loading, feature extraction, training epochs), through ``logging``.

Library code logs to the ``"tfmed"`` logger at INFO level and prints nothing
itself. The command line calls :func:`configure_logging`, which shows each
line with a timestamp on standard output; call it yourself in a script or
notebook to see the same lines (or attach your own handler to ``"tfmed"``).
What native libraries (e.g. libpng inside OpenCV) print straight to the
process's stderr is caught with :func:`native_stderr_captured`, so that it
can be reported with the file that caused it instead of on the terminal.

Example:
    >>> configure_logging()                # doctest: +SKIP
    >>> log("extracting features")        # doctest: +SKIP
    [tfmed 10:15:02] extracting features
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from dataclasses import dataclass

LOGGER = logging.getLogger("tfmed")
LOGGER.addHandler(logging.NullHandler())
FORMAT = "[tfmed %(asctime)s] %(message)s"
DATE_FORMAT = "%H:%M:%S"


def log(message: str) -> None:
    """Log one progress line (INFO) on the ``"tfmed"`` logger."""
    LOGGER.info(message)


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (so redirections and captures see it), or to
    ``sys.stderr`` within :func:`progress_on_stderr`."""

    to_stderr = False

    @property
    def stream(self):
        return sys.stderr if self.to_stderr else sys.stdout

    @stream.setter
    def stream(self, value):
        pass


class Throughput:
    """Progress lines of a long per-image step with its rate and time left:
    ``resnet50 features: 4096/50000 images, 31.2 images/s, about 24 min left``.

    ``advance(n)`` counts images done; a line is logged at most every
    ``every_seconds`` seconds, and when the last image is done if the step
    took that long (a short step, e.g. scoring a few images, logs nothing).

    Example:
        >>> progress = Throughput(100, "features", every_seconds=0.0)
        >>> progress.line(40, 8.0)
        'features: 40/100 images, 5.0 images/s, about 12 s left'
    """

    def __init__(self, total: int, what: str, every_seconds: float = 15.0):
        import time

        self._clock = time.monotonic
        self.total, self.what, self.every_seconds = int(total), what, every_seconds
        self.done = 0
        self._start = self._last = self._clock()

    def advance(self, count: int) -> None:
        """Count ``count`` more images done; log a line when it is time."""
        self.done += int(count)
        now = self._clock()
        if now - self._last >= self.every_seconds or (self.done >= self.total
                                                       and now - self._start >= self.every_seconds):
            self._last = now
            log(self.line(self.done, now - self._start))

    def line(self, done: int, seconds: float) -> str:
        """The progress line after ``done`` images in ``seconds``."""
        rate = done / seconds if seconds > 0 else 0.0
        text = f"{self.what}: {done}/{self.total} images, {rate:.1f} images/s"
        if done < self.total and rate > 0:
            left = (self.total - done) / rate
            text += f", about {left / 60:.0f} min left" if left >= 120 else f", about {left:.0f} s left"
        return text


def configure_logging(level: int = logging.INFO) -> logging.Handler:
    """Show tfmed's progress lines on standard output as ``[tfmed HH:MM:SS] message``.

    Calling it again does not add a second handler. The lines then no longer
    reach the root logger, so a handler there (set by a notebook, or by a
    library's ``logging.info``) does not print each line twice.

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
    LOGGER.propagate = False
    return handler


@contextlib.contextmanager
def progress_on_stderr():
    """Within the block, the progress lines of :func:`configure_logging` go to standard error, so that a
    command printing data on standard output (``tfmed predict`` without ``--output``) prints nothing else.

    Example:
        >>> with progress_on_stderr():
        ...     log("scoring")  # on stderr
    """
    handlers = [handler for handler in LOGGER.handlers if isinstance(handler, _CurrentStdout)]
    for handler in handlers:
        handler.to_stderr = True
    try:
        yield
    finally:
        for handler in handlers:
            handler.to_stderr = False


# File descriptor 2 is one per process: captures in different threads take turns.
_CAPTURE_LOCK = threading.RLock()


@dataclass
class CapturedText:
    """What a :func:`native_stderr_captured` block caught; ``text`` is filled when the block ends."""

    text: str = ""


@contextlib.contextmanager
def native_stderr_captured():
    """Catch what native code writes to file descriptor 2 (the process's stderr) while active.

    C libraries such as libpng print their messages straight to file
    descriptor 2, past ``sys.stderr``. Inside this block fd 2 points at a
    temporary file; when the block ends fd 2 is restored and the caught text
    (stripped) is in ``.text``. Python's own writes to ``sys.stderr`` are
    caught too while ``sys.stderr`` is fd 2. To silence native output,
    capture it and ignore ``.text``. Where fd 2 is not a real file descriptor
    (e.g. some notebook kernels) nothing is caught. Blocks in different
    threads take turns (nested blocks in one thread are fine), so a thread
    must not wait, inside a block, for another thread that opens one.

    Example:
        >>> import os
        >>> with native_stderr_captured() as printed:
        ...     _ = os.write(2, b"libpng warning: iCCP: too short\\n")
        >>> printed.text
        'libpng warning: iCCP: too short'
    """
    captured = CapturedText()
    with _CAPTURE_LOCK:
        _flush_stderr()
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 to redirect
            saved = None
        if saved is None:
            yield captured
            return
        try:
            with tempfile.TemporaryFile() as sink:
                os.dup2(sink.fileno(), 2)
                try:
                    yield captured
                finally:
                    _flush_stderr()
                    os.dup2(saved, 2)
                    sink.seek(0)
                    captured.text = sink.read().decode("utf-8", errors="replace").strip()
        finally:
            os.close(saved)


def _flush_stderr() -> None:
    """Flush Python's buffered stderr so its text lands on the side of a redirection it was written on."""
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # None (no console) or closed
        pass
