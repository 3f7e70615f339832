"""Explain a fitted tfmed model on a table of images, an ensemble's members included.

A model of several views of a volume is explained on mosaics of its views
(:mod:`tfmed.explain.mosaic`): the images and maps are then one mosaic per case.

A mode tells what to explain through ``explain_models(inputs)``: one
``(name, keras.Model, ImageInputs)`` per differentiable part (one for a
fine-tuned or an SVM model, one per member for an ensemble). Each part is
explained on its own inputs (the identity view: no test-time augmentation), its
maps are resized to the first part's image size, and the shown map is their
mean. Faithfulness and the sanity check are measured per part, on that part's
own maps, and averaged.

Example:
    >>> result = explain_table(model.estimator, model.inputs, table, "gradcam")  # doctest: +SKIP
    >>> result.maps.shape                                                       # doctest: +SKIP
    (8, 96, 96)
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import numpy as np

from tfmed.explain.faithfulness import SanityCheckWarning, faithfulness, sanity_check
from tfmed.explain.maps import normalise, resize_maps
from tfmed.explain.methods import checked_method, explain
from tfmed.explain.mosaic import ViewGrid, mosaic_model, to_mosaic
from tfmed.explain.target import ExplainError, FlatMapWarning, keras_model_of


@dataclass
class PartExplanation:
    """One differentiable part's model, the images it read and its maps."""

    name: str
    model: object
    images: np.ndarray
    maps: np.ndarray


@dataclass
class TableExplanation:
    """Maps (N, H, W) in [0, 1] (the mean over parts), the images they are drawn over, and each part."""

    method: str
    maps: np.ndarray
    images: np.ndarray
    parts: list[PartExplanation] = field(default_factory=list)
    grid: ViewGrid | None = None   # views of volumes: the images are mosaics laid out by this grid
    notes: list[str] = field(default_factory=list)  # why maps cannot show where a part looks (a 1 x 1 layer)
    index: object = None   # the class (or one per image) the maps explain, when explain_table chose it
    resize: str = "plain"  # how the shown images were fitted to the model's size (preprocess.resize): boxes go alike

    def trust(self, index=None, steps: int = 20, seed: int = 0, layer: str | None = None) -> dict:
        """Faithfulness (deletion / insertion AUC, in the map's and a random order) and the sanity rank
        correlation, averaged over parts (None where a part has no figure: every map flat); ``flat_maps``
        counts flat maps over parts; an ensemble also lists each member's figures under ``members``.
        ``index`` None: the class(es) the maps explain.

        Example:
            >>> result.trust(index=1)["deletion_auc"]  # doctest: +SKIP
            0.18
        """
        records, notes = [], []
        index = self.index if index is None else index
        for part in self.parts:
            record = {"member": part.name}
            record.update(faithfulness(part.model, part.images, part.maps, index=index, steps=steps, seed=seed,
                                       grid=self.grid))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SanityCheckWarning)
                record["sanity_rank_correlation"] = sanity_check(part.model, part.images, self.method, index=index,
                                                                 layer=layer, seed=seed, maps=part.maps)
            notes += [f"{part.name}: {w.message}" if len(self.parts) > 1 else str(w.message)
                      for w in caught if issubclass(w.category, SanityCheckWarning)]
            records.append(record)
        keys = [k for k in records[0] if k not in ("member", "flat_maps")]
        summary = {"method": self.method, "images": int(len(self.maps)),
                   "flat_maps": int(sum(r["flat_maps"] for r in records))}
        for key in keys:
            values = [r[key] for r in records if r[key] is not None]
            summary[key] = float(np.mean(values)) if values else None
        if notes:
            summary["sanity_notes"] = notes
        if len(records) > 1:
            summary["members"] = records
        return summary


def explain_table(estimator, inputs, table, method: str = "gradcam", *, index=None,
                  layer: str | None = None) -> TableExplanation:
    """Explain every row of ``table`` with a fitted mode's model(s) (see the module text).

    Args:
        estimator: a fitted mode (FeatureSVM, FineTuner, Ensemble), e.g. ``TrainedModel.estimator``.
        inputs: the :class:`~tfmed.data.pipeline.ImageInputs` the model was trained with.
        table: the rows to explain.
        method, index, layer: as :func:`tfmed.explain.explain`; ``index`` may give one class per row. An
            ensemble of several classes or labels without ``index`` explains, in every member, the class
            the ensemble scores highest for each row (not each member's own).
    """
    checked_method(method, layer)  # before any map: a pixel method reads no layer
    parts = estimator.explain_models(dataclasses.replace(inputs, tta=None, view=None))
    if layer is not None and len(parts) > 1:
        raise ExplainError(f"layer {layer!r} was given, but the model has {len(parts)} members "
                           f"({', '.join(name for name, _, _ in parts)}) with their own layers; "
                           "leave the layer out to use each member's default")
    resized = {name: own.preprocess.resize for name, _, own in parts}
    if len(set(resized.values())) > 1:
        raise ExplainError("the members fit images to their size in different ways ("
                           + ", ".join(f"{name}: preprocess.resize {how}" for name, how in resized.items())
                           + "), so their maps do not lie over the same pixels and cannot be averaged; give the "
                           "members one preprocess.resize, or explain each member's own run")
    if index is None and len(parts) > 1 and keras_model_of(parts[0][1]).outputs[0].shape[-1] > 1:
        index = _top_classes(estimator, inputs, table)
    explained, grid, notes = [], None, []
    for name, model, own_inputs in parts:
        images = own_inputs.arrays(table)[0]
        if images.ndim == 5:   # views of volumes: the model reads them as one mosaic per case
            model, grid = mosaic_model(keras_model_of(model))
            images = to_mosaic(images, grid)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FlatMapWarning)
            maps = explain(model, images, method, index=index, layer=layer)
        for warning in caught:
            if issubclass(warning.category, FlatMapWarning):
                notes.append(f"{name}: {warning.message}" if len(parts) > 1 else str(warning.message))
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        explained.append(PartExplanation(name, model, images, maps))
    size = explained[0].maps.shape[1:]
    mean = np.mean([resize_maps(part.maps, size) for part in explained], axis=0)
    return TableExplanation(method, normalise(mean), explained[0].images, explained, grid, notes, index,
                            parts[0][2].preprocess.resize)


def _top_classes(estimator, inputs, table) -> np.ndarray:
    """Each row's class (or label) scored highest by the whole ensemble."""
    return np.argmax(np.asarray(estimator.predict_table(table, inputs)), axis=1)

