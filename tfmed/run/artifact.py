"""A trained model as one artifact: estimator, preprocessing, classes, thresholds.

Whatever the mode (features + SVM or fine-tuning), a run saves its model as a
directory that carries everything prediction needs: the estimator, the
preprocessing config and training-split statistics (so inference preprocesses
exactly as training did), the class names and the thresholds chosen on
validation.

Example:
    >>> model = TrainedModel.load("runs/pneumonia_mnist/20261124-101500/model")  # doctest: +SKIP
    >>> scores = model.predict(table)                                            # doctest: +SKIP
    >>> decisions = model.decide(scores)                                         # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tfmed.config import PreprocessConfig, TTAConfig, ViewsConfig
from tfmed.data.pipeline import ImageInputs
from tfmed.data.statistics import bit_depth_mismatch, load_statistics, save_statistics
from tfmed.data.table import ImageTable
from tfmed.errors import TfmedError
from tfmed.evaluation.hierarchy import Hierarchy
from tfmed.evaluation.recalibration import Recalibration
from tfmed.evaluation.thresholds import reaches
from tfmed.files import DAMAGED, read_json
from tfmed.modes import MemberScoring, get_mode
from tfmed.progress import log
from tfmed.run.manifest import check_run

ARTIFACT_FILE = "tfmed_model.json"


class ModelArtifactError(TfmedError):
    """A saved model directory is missing, incomplete or does not fit the data."""


@dataclass
class TrainedModel:
    """A fitted mode with the preprocessing and thresholds it was trained with.

    ``thresholds`` (chosen on validation, saved in ``tfmed_model.json``) are the
    one record of the model's operating points; the estimator keeps none. A
    multiclass model with a class ``hierarchy`` (``evaluation.hierarchy``:
    coarse class -> its fine classes) also answers for the coarse classes, its
    fine probabilities summed (Esteva et al. 2017), with ``coarse_thresholds``
    chosen on validation when there are two coarse classes. A ``recalibration``
    (``evaluation.recalibration``, fitted where the thresholds were chosen) turns
    every score the model gives into a recalibrated probability; the thresholds
    apply to those.
    """

    mode: str
    task: str
    classes: list[str]
    preprocess: PreprocessConfig
    stats: dict | None
    estimator: Any
    thresholds: dict = field(default_factory=dict)
    threshold_method: str = "youden"
    backbone: str = ""
    tta: TTAConfig = field(default_factory=TTAConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    hierarchy: dict | None = None
    coarse_thresholds: dict = field(default_factory=dict)
    recalibration: Recalibration | None = None

    @property
    def threshold(self):
        """The operating threshold chosen on validation (per label for multilabel)."""
        return self.thresholds.get(self.threshold_method)

    @property
    def gives_probabilities(self) -> bool:
        """Whether the scores are probabilities: not for a rank-averaged ensemble that no recalibration turned
        into them (its scores are mean ranks, so Brier, calibration and decision curves do not apply)."""
        return not self.combines_ranks or self.recalibration is not None

    @property
    def combines_ranks(self) -> bool:
        """Whether the model is an ensemble that averages its members' ranks, or a k-fold bag of such (mean ranks,
        before any recalibration)."""
        return getattr(self.estimator, "gives_ranks", False)

    @property
    def inputs(self) -> ImageInputs:
        """The preprocessing, train statistics and test-time views that turn a table into this model's inputs."""
        return ImageInputs(self.preprocess, self.stats, tta=self.tta,
                           volume_views=self.views if self.views.enabled else None)

    def validate_images(self, table: ImageTable, max_pixels: int | None, where: str):
        """New images (``table``, named ``where`` in messages) validated as the run's own were, for their bad rows
        (the returned report); its warnings are logged, and so are files of another bit depth than the training
        statistics were fitted on (:meth:`bit_depth_warning`)."""
        from tfmed.data.validate import validate_table

        report = validate_table(table, max_pixels=max_pixels, views=self.views, intensity=self.preprocess.intensity)
        if report.warnings:
            log(report.warnings_text())
        depths = self.bit_depth_warning(report.bit_depths)
        if depths:
            log(f"warning: {where}: {depths}")
        return report

    def bit_depth_warning(self, depths: dict) -> str | None:
        """Why new files of bit ``depths`` ({bit depth: count}) would be misread by the training statistics of this
        model or of one of its ensemble members (see :func:`~tfmed.data.statistics.bit_depth_mismatch`)."""
        members = getattr(self.estimator, "members", None) or []
        for stats in [self.stats] + [member.inputs_for(self.inputs).stats for member in members]:
            problem = bit_depth_mismatch(stats or {}, depths)
            if problem:
                return problem
        return None

    def predict(self, table: ImageTable, batch_size: int = 64) -> np.ndarray:
        """Scores for every row of ``table``, in table order (averaged over the test-time views)."""
        return self.predict_with_members(table, batch_size)[0]

    def predict_with_members(self, table: ImageTable, batch_size: int = 64) -> tuple[np.ndarray, dict | None]:
        """Scores for every row and, for a model made of members (an ensemble), each member's
        scores by name (None otherwise); the scores are the combination of the member scores, recalibrated
        when the model has a recalibration (the members' are as they give them)."""
        if table.task != self.task and not (table.task in ("binary", "multiclass") and
                                             self.task in ("binary", "multiclass")):
            raise ModelArtifactError(f"the model was trained for a {self.task} task but the data "
                                     f"is {table.task}; evaluate it on data with the same labels")
        members = None
        if isinstance(self.estimator, MemberScoring):
            members = self.estimator.member_scores(table, self.inputs, batch_size=batch_size)
            scores = self.estimator.combine_scores(members)
        else:
            scores = self.estimator.predict_table(table, self.inputs, batch_size=batch_size)
        _check_finite(scores, table)
        return (scores if self.recalibration is None else self.recalibration.apply(scores)), members

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """Decisions at the stored threshold (binary/multilabel) or the argmax class."""
        scores = np.asarray(scores)
        if self.task == "multiclass":
            return scores.argmax(axis=1)
        return reaches(scores, self.threshold).astype(int)

    @property
    def class_hierarchy(self) -> Hierarchy:
        """The model's class hierarchy (``evaluation.hierarchy``) as a :class:`Hierarchy`.

        Raises:
            ModelArtifactError: the model has none.

        Example:
            >>> model.class_hierarchy.coarse_classes  # doctest: +SKIP
            ['non_tb', 'tb']
        """
        if not self.hierarchy:
            raise ModelArtifactError("this model has no class hierarchy (evaluation.hierarchy), so no coarse "
                                     "classes")
        return Hierarchy(self.hierarchy)

    def coarse(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The coarse scores of fine-class ``scores`` (the second coarse class's probability for two coarse
        classes, else one column per coarse class) and the coarse decisions (index of the coarse class) at the
        stored coarse threshold, or by argmax.

        Example:
            >>> model.hierarchy = {"non_tb": ["healthy", "sick_non_tb"], "tb": ["tuberculosis"]}  # doctest: +SKIP
            >>> model.coarse(model.predict(table))  # doctest: +SKIP
            (array([0.91, 0.08]), array([1, 0]))
        """
        hierarchy = self.class_hierarchy
        coarse = hierarchy.coarse_scores(scores, self.classes)
        if hierarchy.task == "multiclass":
            return coarse, coarse.argmax(axis=1)
        return coarse, reaches(coarse, self.coarse_thresholds[self.threshold_method]).astype(int)

    def coarse_columns(self, scores: np.ndarray) -> dict[str, list]:
        """The prediction columns of the coarse classes (none without a hierarchy): for two coarse classes
        ``coarse_score`` (the second's summed probability), else ``coarse_score:<name>`` each; and
        ``coarse_decision``, the coarse class decided (at the stored coarse threshold, or by argmax).

        Example:
            >>> model.coarse_columns(scores)  # doctest: +SKIP
            {'coarse_score': [0.91, 0.08], 'coarse_decision': ['tb', 'non_tb']}
        """
        if not self.hierarchy:
            return {}
        coarse, decisions = self.coarse(scores)
        names = list(self.hierarchy)
        # full precision, as the fine scores: a rounded score can fall below the threshold that decided it
        columns = ({"coarse_score": coarse.tolist()} if coarse.ndim == 1 else
                   {f"coarse_score:{name}": coarse[:, k].tolist() for k, name in enumerate(names)})
        columns["coarse_decision"] = [names[k] for k in decisions]
        return columns

    def save(self, directory: str | Path) -> Path:
        """Write the artifact into ``directory`` (created)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.estimator.save(directory / "estimator")
        if self.stats:
            save_statistics(self.stats, directory / "statistics")
        meta = {
            "mode": self.mode, "task": self.task, "classes": list(self.classes),
            "preprocess": dataclasses.asdict(self.preprocess), "has_stats": bool(self.stats),
            "thresholds": _jsonable(self.thresholds), "threshold_method": self.threshold_method,
            "backbone": self.backbone, "tta": dataclasses.asdict(self.tta),
            "views": dataclasses.asdict(self.views),
            "hierarchy": self.hierarchy, "coarse_thresholds": _jsonable(self.coarse_thresholds),
            "recalibration": self.recalibration.to_json() if self.recalibration else None,
        }
        (directory / ARTIFACT_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, verify: bool = True, trust_pickles: bool = False) -> "TrainedModel":
        """Load a model saved by :meth:`save`; ``directory`` may also be a run directory.

        A model inside a run directory is read only after the run's
        ``MANIFEST.sha256`` has been checked (``verify=False`` skips the check
        and says so). No file is unpickled unless ``trust_pickles`` allows an
        SVM pickle written by tfmed 0.1.

        Example:
            >>> model = TrainedModel.load("runs/pneumonia_mnist/20261124-101500")  # doctest: +SKIP
        """
        directory = Path(directory)
        if (directory / "model" / ARTIFACT_FILE).is_file():
            directory = directory / "model"
        meta_path = directory / ARTIFACT_FILE
        if not meta_path.is_file():
            raise ModelArtifactError(f"{directory}: no saved tfmed model here (expected {ARTIFACT_FILE}); "
                                     "pass a run directory such as runs/NAME/TIMESTAMP")
        if directory.name == "model" and (directory.parent / "config.yaml").is_file():
            check_run(directory.parent, verify)
        meta = read_json(meta_path, ModelArtifactError)
        try:
            mode = get_mode(meta["mode"])
            fields = dict(mode=meta["mode"], task=meta["task"], classes=meta["classes"],
                          preprocess=PreprocessConfig(**meta["preprocess"]), thresholds=meta.get("thresholds", {}),
                          threshold_method=meta.get("threshold_method", "youden"),
                          backbone=meta.get("backbone", ""), tta=TTAConfig(**meta.get("tta", {})),
                          views=ViewsConfig(**meta.get("views", {})), hierarchy=meta.get("hierarchy"),
                          coarse_thresholds=meta.get("coarse_thresholds", {}),
                          recalibration=Recalibration.from_json(meta.get("recalibration")))
        except TfmedError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise ModelArtifactError(f"{meta_path}: incomplete or damaged ({type(error).__name__}: {error}); "
                                     f"{DAMAGED}") from None
        stats = load_statistics(directory / "statistics") if meta.get("has_stats") else None
        estimator = mode.load(directory / "estimator", trust_pickles=trust_pickles)
        return cls(stats=stats, estimator=estimator, **fields)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in np.asarray(value).tolist()] if isinstance(value, np.ndarray) \
            else [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def _check_finite(scores: np.ndarray, table: ImageTable) -> None:
    """Refuse NaN or infinite scores, naming the rows: a decision made from them would be meaningless."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(scores, dtype=float).reshape(len(scores), -1)).all(axis=1))
    if len(bad):
        frame = table.frame
        rows = frame["row"].tolist() if "row" in frame.columns else [f"at position {i}" for i in range(len(frame))]
        shown = "; ".join(f"row {rows[i]}: {frame['image'].iloc[i]}" for i in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ModelArtifactError(f"the model gave NaN or infinite scores for {len(bad)} image(s) ({shown}{more}); "
                                 "their pixels or voxels hold NaN or infinite values (see `tfmed inspect`), or "
                                 "the model's weights do: fix those inputs or leave them out")
