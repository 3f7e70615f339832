"""Hierarchical labels: train on fine classes, report coarse ones.

Esteva et al. (2017) trained a skin-lesion classifier on hundreds of fine
disease classes and obtained the probability of each coarse class (benign,
malignant, ...) by summing the probabilities of the fine classes under it.
:class:`Hierarchy` holds that coarse -> fine mapping, checks it once, and
turns fine-class probabilities or labels into coarse ones.

Example:
    >>> import numpy as np
    >>> h = Hierarchy({"benign": ["nevus", "lentigo"], "malignant": ["melanoma"]})
    >>> proba, names = h.coarse_probabilities(np.array([[0.2, 0.3, 0.5]]),
    ...                                       ["nevus", "lentigo", "melanoma"])
    >>> names, proba.round(2).tolist()
    (['benign', 'malignant'], [[0.5, 0.5]])
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tfmed.errors import TfmedError


class HierarchyError(TfmedError):
    """The class hierarchy, or the classes/probabilities given to it, are inconsistent."""


class Hierarchy:
    """A two-level class hierarchy: each coarse class owns a list of fine classes.

    Every fine class must belong to exactly one coarse class, so that the
    coarse probabilities are sums over disjoint groups and add up to one.

    Args:
        mapping: ``{coarse_name: [fine_name, ...], ...}``; coarse classes keep
            the mapping's order.

    Raises:
        HierarchyError: the mapping is empty, a coarse class has no fine
            classes, or a fine class appears twice (the message names it and
            the coarse classes that claim it).

    Example:
        >>> h = Hierarchy({"normal": ["normal"], "pneumonia": ["bacterial", "viral"]})
        >>> h.coarse_of("viral")
        'pneumonia'
        >>> h.fine_classes
        ['normal', 'bacterial', 'viral']
    """

    def __init__(self, mapping: Mapping[str, Sequence[str]]):
        if not isinstance(mapping, Mapping) or not mapping:
            raise HierarchyError("the hierarchy must be a non-empty mapping "
                                 "{coarse class: [fine classes]}, e.g. "
                                 "{'benign': ['nevus'], 'malignant': ['melanoma']}; "
                                 f"got {mapping!r}")
        self.mapping: dict[str, list[str]] = {}
        owner: dict[str, str] = {}
        for coarse, fines in mapping.items():
            coarse = str(coarse)
            if isinstance(fines, str) or not isinstance(fines, Sequence) or len(fines) == 0:
                raise HierarchyError(f"coarse class {coarse!r} must list at least one fine class, "
                                     f"got {fines!r}")
            for fine in fines:
                fine = str(fine)
                if fine in owner:
                    where = (f"twice under {coarse!r}" if owner[fine] == coarse
                             else f"under both {owner[fine]!r} and {coarse!r}")
                    raise HierarchyError(f"fine class {fine!r} appears {where}; each fine class "
                                         "must belong to exactly one coarse class")
                owner[fine] = coarse
            self.mapping[coarse] = [str(f) for f in fines]
        self._owner = owner

    @property
    def coarse_classes(self) -> list[str]:
        """Coarse class names, in mapping order."""
        return list(self.mapping)

    @property
    def task(self) -> str:
        """The coarse task: "binary" with two coarse classes (the second one the positive), else "multiclass".

        Example:
            >>> Hierarchy({"non_tb": ["healthy", "sick"], "tb": ["tb"]}).task
            'binary'
        """
        return "binary" if len(self.mapping) == 2 else "multiclass"

    def coarse_scores(self, fine_proba, fine_classes: Sequence[str]) -> np.ndarray:
        """Coarse scores in the form of :attr:`task`: for two coarse classes the summed probability of the
        second one, (n,); else the (n, C) coarse probabilities.

        Example:
            >>> h = Hierarchy({"non_tb": ["healthy", "sick"], "tb": ["tb"]})
            >>> h.coarse_scores([[0.5, 0.2, 0.3]], ["healthy", "sick", "tb"]).round(2).tolist()
            [0.3]
        """
        proba, _ = self.coarse_probabilities(fine_proba, fine_classes)
        return proba[:, 1] if self.task == "binary" else proba

    @property
    def fine_classes(self) -> list[str]:
        """All fine class names, grouped by coarse class in mapping order."""
        return [fine for fines in self.mapping.values() for fine in fines]

    def coarse_of(self, fine: str) -> str:
        """The coarse class that ``fine`` belongs to.

        Example:
            >>> Hierarchy({"a": ["x", "y"]}).coarse_of("y")
            'a'
        """
        try:
            return self._owner[str(fine)]
        except KeyError:
            raise HierarchyError(f"fine class {str(fine)!r} is not in the hierarchy; known fine classes: "
                                 f"{', '.join(self.fine_classes)}") from None

    def membership(self, fine_classes: Sequence[str]) -> np.ndarray:
        """A 0/1 matrix (len(fine_classes), n_coarse): row i marks the coarse class of fine class i.

        ``fine_classes`` is the model's output order; it must name every fine
        class of the hierarchy exactly once and nothing else.

        Example:
            >>> Hierarchy({"a": ["x"], "b": ["y", "z"]}).membership(["z", "x", "y"]).tolist()
            [[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]
        """
        fine_classes = [str(c) for c in fine_classes]
        seen = set()
        for name in fine_classes:
            if name in seen:
                raise HierarchyError(f"fine class {name!r} is listed twice in the model's classes")
            seen.add(name)
        unknown = [c for c in fine_classes if c not in self._owner]
        if unknown:
            other_case = [fine for fine in self._owner if fine.lower() == unknown[0].lower()]
            raise HierarchyError(f"model class {unknown[0]!r} is not in the hierarchy; " + (
                f"it writes {other_case[0]!r} (names are matched exactly): write {unknown[0]!r}" if other_case else
                f"add it under one of the coarse classes {', '.join(self.coarse_classes)}"))
        missing = [c for c in self.fine_classes if c not in seen]
        if missing:
            raise HierarchyError(f"fine class {missing[0]!r} of the hierarchy is not among the "
                                 f"model's classes ({', '.join(fine_classes)}); remove it from the "
                                 "hierarchy or train on it")
        coarse_index = {c: j for j, c in enumerate(self.coarse_classes)}
        matrix = np.zeros((len(fine_classes), len(coarse_index)))
        for i, name in enumerate(fine_classes):
            matrix[i, coarse_index[self._owner[name]]] = 1.0
        return matrix

    def coarse_probabilities(self, fine_proba, fine_classes: Sequence[str]
                             ) -> tuple[np.ndarray, list[str]]:
        """Sum fine-class probabilities into coarse-class probabilities.

        Args:
            fine_proba: (n, F) probabilities (e.g. softmax outputs), columns in
                the order of ``fine_classes``.
            fine_classes: the F fine class names, in the model's output order.

        Returns:
            ``(coarse_proba, coarse_classes)``: an (n, C) array and the C
            coarse names in mapping order.

        Example:
            >>> h = Hierarchy({"a": ["x", "y"], "b": ["z"]})
            >>> p, names = h.coarse_probabilities([[0.1, 0.6, 0.3]], ["x", "z", "y"])
            >>> p.round(2).tolist(), names
            ([[0.4, 0.6]], ['a', 'b'])
        """
        proba = np.asarray(fine_proba, dtype=np.float64)
        if proba.ndim == 1:
            proba = proba[None, :]
        if proba.ndim != 2 or proba.shape[1] != len(fine_classes):
            raise HierarchyError(f"fine probabilities have shape {np.shape(fine_proba)}; expected "
                                 f"(n, {len(fine_classes)}), one column per fine class "
                                 f"({', '.join(map(str, fine_classes))})")
        return proba @ self.membership(fine_classes), self.coarse_classes

    def coarse_labels(self, fine_labels, fine_classes: Sequence[str] | None = None) -> np.ndarray:
        """Map fine labels to coarse labels.

        Args:
            fine_labels: fine class names, or integer indices into
                ``fine_classes``.
            fine_classes: needed for integer labels: the fine class names in
                index order.

        Returns:
            Coarse class names for name labels; integer indices into
            :attr:`coarse_classes` for integer labels.

        Example:
            >>> h = Hierarchy({"a": ["x", "y"], "b": ["z"]})
            >>> h.coarse_labels(["z", "x"]).tolist()
            ['b', 'a']
            >>> h.coarse_labels([0, 1, 2], fine_classes=["z", "x", "y"]).tolist()
            [1, 0, 0]
        """
        labels = np.asarray(fine_labels)
        if labels.dtype.kind in "iu":
            if fine_classes is None:
                raise HierarchyError("integer fine labels need fine_classes (the class names in "
                                     "index order) to be mapped to coarse classes")
            matrix = self.membership(fine_classes)
            bad = labels[(labels < 0) | (labels >= len(fine_classes))]
            if bad.size:
                raise HierarchyError(f"fine label {int(bad[0])} is outside 0..{len(fine_classes) - 1} "
                                     f"(the {len(fine_classes)} fine classes)")
            return matrix.argmax(axis=1)[labels]
        return np.array([self.coarse_of(name) for name in labels.ravel()],
                        dtype=object).reshape(labels.shape)

    def __repr__(self) -> str:
        return f"Hierarchy({self.mapping!r})"
