"""Ensemble mode: several members fitted on the same training split, their scores combined.

Lakhani & Sundaram 2017 reached AUC 0.99 for tuberculosis on chest X-rays with
an ensemble of fine-tuned networks: members that err differently cancel part
of each other's errors, and an ensemble holds up better than any one member on
images from another hospital. A member is any configured mode (features + SVM
from any backbone and taps, a fine-tune of any backbone) with, optionally, its
own preprocessing. Members' scores are combined by :class:`ScoreCombiner`
("mean", "rank" or "stacking"); "rank" and "stacking" learn from out-of-fold
member scores from a k-fold over the training split (each member is then fitted
k + 1 times), never from the validation or test scores they are judged on.

The same class holds the k fold models of ``split.final: bag`` and the saved
runs combined by ``tfmed ensemble`` (:meth:`Ensemble.of_fitted`).

Example:
    >>> from tfmed.config import ExperimentConfig
    >>> cfg = ExperimentConfig.from_dict({"model": {"mode": "ensemble", "ensemble": {"members": [
    ...     {"name": "features", "mode": "svm"}, {"name": "tuned", "mode": "finetune"}]}}})
    >>> Ensemble.from_experiment(cfg, None, None).member_names
    ['features', 'tuned']
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tfmed.config import ConfigError, ExperimentConfig, PreprocessConfig
from tfmed.data.pipeline import ImageInputs
from tfmed.data.statistics import as_training, fit_inputs, load_statistics, refit_inputs, save_statistics
from tfmed.errors import TfmedError
from tfmed.files import DAMAGED, read_json
from tfmed.modes.base import MODES, get_mode, register_mode
from tfmed.modes.combine import ScoreCombiner
from tfmed.progress import log

ENSEMBLE_FILE = "ensemble.json"


@dataclass
class Member:
    """One ensemble member: its name, its fitted model and, when it has its own, its inputs.

    ``inputs`` None means the member sees the ensemble's inputs. ``config``
    (the member's experiment) is kept only until the member is fitted.
    """

    name: str
    estimator: Any = None
    inputs: ImageInputs | None = None
    config: ExperimentConfig | None = None

    def inputs_for(self, given: ImageInputs) -> ImageInputs:
        """The inputs this member scores: its own preprocessing, with the test-time views and the 2-D
        views of volumes asked for in ``given``."""
        if self.inputs is None:
            return given
        return dataclasses.replace(self.inputs, tta=given.tta, view=given.view, volume_views=given.volume_views)


@register_mode
class Ensemble:
    """Members fitted on one training split; scores combined by ``combine``.

    Args:
        members: :class:`Member` records (unfitted, with their ``config``, or fitted).
        combine: "mean", "rank" or "stacking" (see :mod:`tfmed.modes.combine`).
        task: "binary", "multiclass" or "multilabel".
        folds: k of the k-fold that gives out-of-fold scores ("rank", "stacking").
        seed: seeds that k-fold.
        run_dir: where members may keep checkpoints (``members/NAME``), or None.
    """

    name: ClassVar[str] = "ensemble"

    def __init__(self, members: list[Member], combine: str = "mean", task: str = "binary", folds: int = 5,
                 seed: int = 0, run_dir: Path | None = None):
        self.members = list(members)
        self.combiner = ScoreCombiner(combine, task)
        self.task, self.folds, self.seed, self.run_dir = task, folds, seed, run_dir

    @property
    def member_names(self) -> list[str]:
        """The members' names, in order."""
        return [m.name for m in self.members]

    @property
    def gives_ranks(self) -> bool:
        """Whether the scores are mean ranks: the rule is "rank", or "mean" over members that all give ranks
        (the k fold models of a rank ensemble, kept by ``split.final: bag``).

        Example:
            >>> ranks = Ensemble.of_fitted([object(), object()], ["a", "b"], "binary", combine="rank")
            >>> Ensemble.of_fitted([ranks, ranks], ["fold_1", "fold_2"], "binary").gives_ranks
            True
        """
        if self.combiner.rule == "rank":
            return True
        return self.combiner.rule == "mean" and all(getattr(m.estimator, "gives_ranks", False) for m in self.members)

    # ---------------------------------------------------------------- protocol
    @classmethod
    def check_before_data(cls, config: ExperimentConfig) -> None:
        """Check every member's backbone, taps and weights before any data is read; the error names the member."""
        for i in range(len(config.model.ensemble.members)):
            member = config.member_experiment(i)
            try:
                get_mode(member.model.mode).check_before_data(member)
            except TfmedError as error:
                raise config.member_error(i, error) from None

    @classmethod
    def check_experiment(cls, config: ExperimentConfig, table) -> None:
        """Check the combination rule, its k-fold over every table the run fits on (the train split, or each
        k-fold training part) and every member against the data's task and ``table``'s split."""
        from tfmed.data.splits import training_parts

        ensemble = config.model.ensemble
        fold_parts = []  # what each member is fitted on for the out-of-fold scores
        if ScoreCombiner(ensemble.combine, table.task).needs_fit:
            for part in training_parts(table, config.split):
                fold_parts += [part.subset(fit) for fit, _ in stacking_folds(part, ensemble.folds, config.split.seed)]
        within = f" (the part an out-of-fold score of model.ensemble.combine {ensemble.combine!r} is fitted on)"
        for i in range(len(config.model.ensemble.members)):
            member = config.member_experiment(i)
            mode = get_mode(member.model.mode)
            try:
                mode.check_experiment(member, table)
                for part in fold_parts if hasattr(mode, "check_training_table") else []:
                    mode.check_training_table(member, part, within)
            except ConfigError as error:
                raise config.member_error(i, error) from None

    @classmethod
    def from_experiment(cls, config: ExperimentConfig, train, run_dir: Path | None) -> "Ensemble":
        """Unfitted members from ``model.ensemble`` (each member's settings over the experiment's)."""
        ensemble = config.model.ensemble
        members = [Member(config.member_name(i), config=config.member_experiment(i))
                   for i in range(len(ensemble.members))]
        task = train.task if train is not None else (config.data.task or "binary")
        return cls(members, ensemble.combine, task, ensemble.folds, config.split.seed, run_dir)

    @classmethod
    def of_fitted(cls, estimators: list, names: list[str], task: str, inputs: list[ImageInputs | None] | None = None,
                  combine: str = "mean") -> "Ensemble":
        """An ensemble of models that are already fitted (k fold models, saved runs).

        Example:
            >>> Ensemble.of_fitted([object(), object()], ["fold_1", "fold_2"], "binary").member_names
            ['fold_1', 'fold_2']
        """
        inputs = inputs or [None] * len(estimators)
        return cls([Member(n, e, i) for n, e, i in zip(names, estimators, inputs)], combine, task)

    def fit_tables(self, train, val, inputs: ImageInputs) -> "Ensemble":
        """Fit every member on ``train`` (``val`` may steer their early stopping); for "rank" and
        "stacking" first fit the combination on out-of-fold member scores over ``train``."""
        self.task = train.task
        self.combiner.task = train.task
        for member in self.members:
            own = member.config.preprocess
            member.inputs = None if own == inputs.preprocess else fit_inputs(own, as_training(train), inputs.tta)
        if self.combiner.needs_fit:
            oof = self._out_of_fold_scores(train, inputs)
            self.combiner.fit(oof, train.labels())
        for member in self.members:
            log(f"ensemble member {member.name}: fitting on {len(train)} images")
            member_dir = None if self.run_dir is None else Path(self.run_dir) / "members" / member.name
            member.estimator = self._fit_member(member, train, val, member.inputs_for(inputs), member_dir)
        return self

    def predict_table(self, table, inputs: ImageInputs, batch_size: int = 64) -> np.ndarray:
        """The combined score of every row (see :meth:`member_scores` for each member's)."""
        return self.combine_scores(self.member_scores(table, inputs, batch_size))

    def member_scores(self, table, inputs: ImageInputs, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Each member's scores for every row of ``table``, by member name.

        Example:
            >>> scores = ensemble.member_scores(table, inputs)  # doctest: +SKIP
            >>> sorted(scores)                                  # doctest: +SKIP
            ['features', 'tuned']
        """
        return {m.name: np.asarray(m.estimator.predict_table(table, m.inputs_for(inputs), batch_size=batch_size))
                for m in self.members}

    def combine_scores(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """The ensemble's score from member scores keyed by name (the documented combination)."""
        missing = [n for n in self.member_names if n not in scores]
        if missing:
            raise ConfigError(f"scores of ensemble member(s) {missing} are missing")
        return self.combiner.combine([scores[n] for n in self.member_names])

    def explain_models(self, inputs: ImageInputs) -> list:
        """Every member's ``(name, Keras model, inputs)``; :mod:`tfmed.explain` averages their maps.

        Example:
            >>> [name for name, _, _ in ensemble.explain_models(inputs)]  # doctest: +SKIP
            ['features', 'tuned']
        """
        return [(member.name, model, own) for member in self.members
                for _, model, own in member.estimator.explain_models(member.inputs_for(inputs))]

    def report_facts(self) -> dict:
        """Members and the combination rule, for the run report.

        Example:
            >>> Ensemble.of_fitted([object(), object()], ["a", "b"], "binary").report_facts()
            {'members': 'a, b', 'combination': 'mean'}
        """
        return {"members": ", ".join(self.member_names), "combination": self.combiner.rule}

    def save(self, directory: str | Path) -> Path:
        """Write ``ensemble.json`` (members, combination state) and one folder per member."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        records = []
        for i, member in enumerate(self.members):
            folder = directory / f"member_{i}"
            member.estimator.save(folder / "estimator")
            record = {"name": member.name, "mode": member.estimator.name, "folder": folder.name,
                      "preprocess": None, "has_stats": False}
            if member.inputs is not None:
                record["preprocess"] = dataclasses.asdict(member.inputs.preprocess)
                if member.inputs.stats:
                    save_statistics(member.inputs.stats, folder / "statistics")
                    record["has_stats"] = True
            records.append(record)
        state = {"task": self.task, "folds": self.folds, "seed": self.seed,
                 "combiner": self.combiner.state(), "members": records}
        (directory / ENSEMBLE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, trust_pickles: bool = False) -> "Ensemble":
        """Read an ensemble written by :meth:`save` (``trust_pickles`` is passed to every member)."""
        directory = Path(directory)
        path = directory / ENSEMBLE_FILE
        if not path.is_file():
            raise ConfigError(f"{directory}: no {ENSEMBLE_FILE}; this is not a saved tfmed ensemble")
        state = read_json(path, ConfigError)
        members = []
        try:
            for record in state["members"]:
                folder = directory / Path(record["folder"]).name  # never a path outside the ensemble
                inputs = None
                if record["preprocess"] is not None:
                    stats = load_statistics(folder / "statistics") if record["has_stats"] else None
                    inputs = ImageInputs(PreprocessConfig(**record["preprocess"]), stats)
                estimator = get_mode(record["mode"]).load(folder / "estimator", trust_pickles=trust_pickles)
                members.append(Member(record["name"], estimator, inputs))
            ensemble = cls(members, state["combiner"]["rule"], state["task"], state["folds"], state["seed"])
            ensemble.combiner = ScoreCombiner.from_state(state["combiner"])
        except TfmedError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"{path}: incomplete or damaged ({type(error).__name__}: {error}); {DAMAGED}") \
                from None
        return ensemble

    # ----------------------------------------------------------------- helpers
    def _fit_member(self, member: Member, train, val, member_inputs: ImageInputs, run_dir: Path | None):
        mode = MODES[member.config.model.mode]
        return mode.from_experiment(member.config, train, run_dir).fit_tables(train, val, member_inputs)

    def _out_of_fold_scores(self, train, inputs: ImageInputs) -> list[np.ndarray]:
        folds = stacking_folds(train, self.folds, self.seed)
        oof: list[np.ndarray | None] = [None] * len(self.members)
        for k, (fit_rows, held_rows) in enumerate(folds):
            fit_part, held_part = train.part(fit_rows), train.part(held_rows)
            shared = refit_inputs(inputs, fit_part)  # statistics of the fold's training part only
            for i, member in enumerate(self.members):
                log(f"ensemble fold {k + 1}/{len(folds)}, member {member.name}: out-of-fold scores")
                fold_inputs = shared if member.inputs is None else refit_inputs(member.inputs_for(inputs), fit_part)
                model = self._fit_member(member, fit_part, None, fold_inputs, None)  # no validation label steers it
                scores = np.asarray(model.predict_table(held_part, fold_inputs))
                if oof[i] is None:
                    oof[i] = np.zeros((len(train),) + scores.shape[1:])
                oof[i][held_rows] = scores
        return oof


def stacking_folds(train, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The ``model.ensemble.folds`` k-fold over the training table ``train`` that gives the out-of-fold
    member scores of combine "rank" and "stacking" (patients kept whole); too many folds raise ConfigError.

    Example:
        >>> stacking_folds(table.split("train"), 40, 0)  # doctest: +SKIP
        Traceback (most recent call last):
        tfmed.config.ConfigError: model.ensemble.folds is 40, but the training images it splits hold 37 patient(s) ...
    """
    from tfmed.data.splits import SplitError, kfold_indices, split_groups

    try:
        return kfold_indices(train, folds, seed)
    except SplitError as error:
        patients = len(np.unique(split_groups(train)))
        if patients < folds:  # kfold_indices' own message is about split.folds, over train and val
            raise ConfigError(f"model.ensemble.folds is {folds}, but the training images it splits hold "
                              f"{patients} patient(s), and each of the folds that give the out-of-fold member "
                              f"scores needs one; set model.ensemble.folds to {max(patients, 2)} or fewer") from None
        raise ConfigError(f"model.ensemble.folds is {folds}: {error}") from None
