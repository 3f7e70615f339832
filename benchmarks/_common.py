"""What the benchmark scripts share (not a benchmark: run on its own it does nothing).

* :func:`experiment`: an experiment YAML as the user typed its path, from the
  working folder first, then from the repository (``experiments/NAME.yaml``
  works from any folder);
* :func:`one_line_errors`: a script's ``main`` with a tfmed error (the user's
  data, config or files: :class:`tfmed.errors.TfmedError`, or an OSError) that reaches its
  end printed as one line ``SCRIPT.py: error: MESSAGE`` and exit status 2, as
  the ``tfmed`` command line and argparse's own refusals do;
* :func:`at_least`: refuse a number option below its minimum, naming both.

Exit status of every script: 0 when it ran and every goal it checks was met,
1 when a goal failed (its PASS/FAIL lines say which), 2 for a refused
argument or a tfmed error.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from tfmed.config import ConfigError, ExperimentConfig
from tfmed.errors import TfmedError

ROOT = Path(__file__).resolve().parent.parent


def experiment(path: str | Path) -> ExperimentConfig:
    """The experiment in ``path``: a file there, else (a relative path) the one under the repository root.

    A missing file is a ConfigError naming ``path`` as typed and the places looked in; an invalid one, the
    ConfigError of :meth:`ExperimentConfig.from_yaml`, naming the file read."""
    typed = Path(path)
    places = [typed] if typed.is_absolute() else [typed, ROOT / typed]
    for place in places:
        if place.exists():
            return ExperimentConfig.from_yaml(place)
    looked = "" if typed.is_absolute() else f" in the working folder ({Path.cwd()}) nor in the repository ({ROOT})"
    raise ConfigError(f"{path}: experiment file not found{looked}; the shipped experiments are "
                      f"{ROOT / 'experiments'}/NAME.yaml")


def one_line_errors(main):
    """``main``, with a TfmedError or OSError (a full disk, a file as folder) printed as one line
    ``SCRIPT.py: error: MESSAGE`` and exit status 2.

    Any other exception is a bug and keeps its traceback."""
    @functools.wraps(main)
    def refusing(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (TfmedError, OSError) as error:  # the user's data, config or files, as for the tfmed command
            print(f"{os.path.basename(sys.argv[0])}: error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
    return refusing


def at_least(parser: argparse.ArgumentParser, option: str, value: int, least: int, why: str) -> None:
    """``parser.error`` (exit status 2) when ``value`` of ``option`` is below ``least``; ``why`` says what needs it."""
    if value < least:
        parser.error(f"{option} is {value}; {why}: give at least {least}")
