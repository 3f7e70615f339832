"""The mode protocol: what the run layer asks of a training mode, and the table of modes by name.

A mode turns tables of images into a fitted model that scores new tables. The
experiment runner, the saved-model artifact, the layer sweep (and later
ensembles and explanations) talk to a mode only through this protocol, found
by name in :data:`MODES`; none of them branches on the mode's name. Adding a
mode is one new module whose class implements :class:`Mode` and is decorated
with :func:`register_mode`, plus its section in :mod:`tfmed.config`.

Example:
    >>> from tfmed.modes import get_mode
    >>> get_mode("svm").__name__, get_mode("finetune").__name__
    ('FeatureSVM', 'FineTuner')
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

import numpy as np

from tfmed.config import ConfigError, ExperimentConfig, ModelConfig, choices

if TYPE_CHECKING:  # pragma: no cover - imported for type hints only
    from tfmed.data.pipeline import ImageInputs
    from tfmed.data.table import ImageTable


@runtime_checkable
class Mode(Protocol):
    """What every training mode implements (the methods' docstrings say what each must do).

    This class only declares the contract; :class:`~tfmed.modes.FeatureSVM` and
    :class:`~tfmed.modes.FineTuner` are the implementations. ``isinstance(model, Mode)``
    checks that an object has every member.
    """

    name: ClassVar[str]  # the ``model.mode`` value that selects the mode

    @classmethod
    def check_before_data(cls, config: ExperimentConfig) -> None:
        """Raise a TfmedError for what the experiment names that does not exist or cannot be had
        (backbone, taps, input size, ImageNet weights), before any data is read."""

    @classmethod
    def check_experiment(cls, config: ExperimentConfig, table: "ImageTable") -> None:
        """Raise ConfigError for settings that do not fit the data's task (before a run directory exists)."""

    @classmethod
    def from_experiment(cls, config: ExperimentConfig, train: "ImageTable", run_dir: Path | None) -> "Mode":
        """A new, unfitted model for the experiment; ``train`` tells the task, classes and class
        counts, ``run_dir`` (or None) is where the mode may keep checkpoints."""

    def fit_tables(self, train: "ImageTable", val: "ImageTable | None", inputs: "ImageInputs") -> "Mode":
        """Fit on the ``train`` table and return self; ``val`` (or None) may steer training
        (early stopping), never thresholds."""

    def predict_table(self, table: "ImageTable", inputs: "ImageInputs", batch_size: int = 64) -> np.ndarray:
        """Scores for every row in table order: (n,) positive-class probability for a binary
        task, (n, K) class probabilities for multiclass, (n, L) label probabilities for multilabel."""

    def save(self, directory: str | Path) -> Path:
        """Write the fitted model under ``directory``."""

    @classmethod
    def load(cls, directory: str | Path, *, trust_pickles: bool = False) -> "Mode":
        """Read a model written by :meth:`save`, running no code from its files; damaged files raise
        a TfmedError naming them. ``trust_pickles`` allows a pickle saved by an older tfmed."""

    def explain_models(self, inputs: "ImageInputs") -> list:
        """``[(name, keras.Model, ImageInputs)]``: the differentiable model(s) that
        :mod:`tfmed.explain` explains, each with the inputs it reads (one per ensemble member)."""

    def report_facts(self) -> dict:
        """What the run report should say about the fitted model beyond backbone and
        preprocessing, e.g. ``{"kernel": "rbf"}`` (may be empty)."""


@runtime_checkable
class MemberScoring(Protocol):
    """A model made of members (an ensemble) that can report each member's scores.

    The run layer uses it to put every member's scores, and the paired DeLong
    test of the combination against each member, into the metrics and report.
    """

    def member_scores(self, table: "ImageTable", inputs: "ImageInputs", batch_size: int = 64) -> dict:
        """Each member's scores for every row of ``table``, keyed by member name."""

    def combine_scores(self, scores: dict) -> np.ndarray:
        """The combined score from member scores keyed by name."""


MODES: dict[str, type] = {}


def register_mode(cls: type) -> type:
    """Class decorator: enter ``cls`` in :data:`MODES` under ``cls.name``.

    The name must be one of ``model.mode``'s choices in :mod:`tfmed.config`.

    Example:
        >>> sorted(MODES)
        ['ensemble', 'finetune', 'svm']
    """
    if cls.name not in choices(ModelConfig, "mode"):
        raise TypeError(f"mode {cls.name!r} is not among model.mode's choices in tfmed.config; add it there")
    MODES[cls.name] = cls
    return cls


def get_mode(name: str) -> type:
    """The mode class registered as ``name``.

    Example:
        >>> try:
        ...     get_mode("tree")
        ... except ConfigError as error:
        ...     print(error)
        model.mode is 'tree'; allowed: ensemble, finetune, svm
    """
    try:
        return MODES[name]
    except KeyError:
        raise ConfigError(f"model.mode is {name!r}; allowed: {', '.join(sorted(MODES))}") from None


def average_over_views(inputs: "ImageInputs", score) -> np.ndarray:
    """The mean of ``score(view_inputs)`` over the test-time views of ``inputs``.

    Without test-time augmentation ``inputs.views()`` is ``[inputs]`` and this is
    ``score(inputs)``. Every mode's ``predict_table`` scores through it, so TTA
    means the same thing in every mode: each view scored, the scores averaged.

    Example:
        >>> from tfmed.config import PreprocessConfig, TTAConfig
        >>> from tfmed.data.pipeline import ImageInputs
        >>> inputs = ImageInputs(PreprocessConfig(image_size=32), tta=TTAConfig(enabled=True))
        >>> float(average_over_views(inputs, lambda view: np.ones(3))[0]), len(inputs.views())
        (1.0, 10)
    """
    total, views = None, inputs.views()
    for view in views:
        scores = np.asarray(score(view), dtype=np.float64)
        total = scores if total is None else total + scores
    return total / len(views)


def scores_from_probabilities(task: str, proba: np.ndarray) -> np.ndarray:
    """Binary: the positive-class probability (n,); otherwise (n, K) as given.

    Example:
        >>> scores_from_probabilities("binary", np.array([[0.2, 0.8]])).tolist()
        [0.8]
    """
    proba = np.asarray(proba, dtype=np.float64)
    if task == "binary":
        if proba.ndim == 2 and proba.shape[1] == 2:
            return proba[:, 1]
        return proba.reshape(-1)
    return proba
