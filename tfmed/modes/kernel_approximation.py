"""An SVM whose fit grows linearly with the number of training images, for large training sets.

An exact kernel SVM (``sklearn.svm.SVC``) costs between n^2 and n^3 to fit,
which is out of reach beyond some ten thousand images once cross-validation
and calibration multiply the fits. :class:`ApproximateKernelSVC` keeps the same
parameters and decision function but fits a linear SVM (``LinearSVC``) on an
explicit feature map: for the RBF kernel the Nystroem approximation of
``exp(-gamma ||x - y||^2)`` on ``n_components`` training rows
(``sklearn.kernel_approximation.Nystroem``); for the linear kernel the features
themselves. Its cost is about n * n_components per fit. With ``solver="sgd"``
(by default on more than :data:`SGD_ABOVE` rows) the linear SVM is fitted by
averaged stochastic gradient descent on the hinge loss of an SVC
(``alpha = 1 / (C n)``, :data:`SGD_EPOCHS` passes) instead of liblinear, which
would copy the whole mapped matrix (doubling the memory) and take 2-4x longer;
on 20,000 PneumoniaMNIST-derived images this cost 0.002 of validation AUC.
(The squared hinge loss is not used with SGD: its unbounded gradients
blow the weights up to ~1e11 at small ``alpha``.)

The decision function has the form of an SVC's,
``f(x) = sum_i dual_coef_i K(x, v_i) + intercept``, with the Nystroem
components as the vectors ``v_i`` (or, for the linear kernel, one vector: the
weights), and the model exposes it through the same attribute names
(``support_vectors_``, ``dual_coef_``, ``intercept_``, ``kernel``, ``_gamma``), so
:mod:`tfmed.modes.svm_graph` turns it into Keras layers like an SVC.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 5)); y = (X[:, 0] ** 2 + X[:, 1] ** 2 > 1.5).astype(int)
    >>> model = ApproximateKernelSVC(C=1.0, n_components=100).fit(X, y)
    >>> bool(model.score(X, y) > 0.9)
    True
    >>> kernel = np.exp(-model._gamma * ((X[:3, None] - model.support_vectors_[None]) ** 2).sum(-1))
    >>> bool(np.allclose(kernel @ model.dual_coef_[0] + model.intercept_, model.decision_function(X[:3])))
    True
"""
from __future__ import annotations

import collections
import hashlib

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import SGDClassifier
from sklearn.svm import LinearSVC
from sklearn.utils.validation import check_is_fitted

SGD_ABOVE = 10_000  # training rows beyond which the linear SVM is fitted by SGD
SGD_EPOCHS = 20
MAP_ROWS = 4096  # rows mapped at a time: the kernel block and its normalised copy stay small
MAP_CACHE_BYTES = 64 * 2 ** 20  # mapped matrices up to this size are kept for the next fit on the same rows
_MAPS: collections.OrderedDict = collections.OrderedDict()  # the last few (map, mapped rows), by key


def solver_for(rows: int) -> str:
    """The linear solver for ``rows`` training rows: "sgd" above :data:`SGD_ABOVE`, else "liblinear".

    Example:
        >>> solver_for(4708), solver_for(50000)
        ('liblinear', 'sgd')
    """
    return "sgd" if rows > SGD_ABOVE else "liblinear"


def _mapped(nystroem: Nystroem, X: np.ndarray, dtype) -> np.ndarray:
    """``nystroem.transform(X)`` in blocks of :data:`MAP_ROWS` rows, written into one array of
    ``dtype`` (a whole-matrix transform holds the kernel and its normalised copy at once: twice
    the result's memory in float64)."""
    mapped = np.empty((len(X), nystroem.normalization_.shape[0]), dtype)
    for start in range(0, len(X), MAP_ROWS):
        mapped[start:start + MAP_ROWS] = nystroem.transform(X[start:start + MAP_ROWS])
    return mapped


def _nystroem_map(X: np.ndarray, gamma: float, components: int, seed, dtype=np.float64) -> tuple[Nystroem, np.ndarray]:
    """The Nystroem map fitted on X and X mapped. A grid search fits one model per C on the same
    fold's rows, and the map does not depend on C: small results are kept (a few, last used
    first) and reused instead of fitted again."""
    key = (hashlib.blake2b(np.ascontiguousarray(X).data, digest_size=16).hexdigest(), X.shape, float(gamma),
           components, seed, np.dtype(dtype).str)
    if key in _MAPS:
        _MAPS.move_to_end(key)
        return _MAPS[key]
    nystroem = Nystroem(kernel="rbf", gamma=gamma, n_components=components, random_state=seed).fit(X)
    mapped = _mapped(nystroem, X, dtype)
    if mapped.nbytes <= MAP_CACHE_BYTES:
        _MAPS[key] = (nystroem, mapped)
        while len(_MAPS) > 6:  # a grid search's folds
            _MAPS.popitem(last=False)
    return nystroem, mapped


class ApproximateKernelSVC(ClassifierMixin, BaseEstimator):
    """A binary SVM on an approximate kernel feature map (see the module text).

    Parameters:
        kernel: "rbf" (Nystroem map) or "linear" (no map).
        C: the SVM's regularisation, as in ``SVC``.
        gamma: "scale" (1 / (features * variance), as ``SVC``), "auto" (1 / features) or a number.
        class_weight: "balanced" or None, as in ``SVC``.
        n_components: Nystroem rows (capped at the number of training rows).
        random_state: seed of the Nystroem sample and of SGD.
        solver: "liblinear" (``LinearSVC``), "sgd" (``SGDClassifier``) or "auto"
            (sgd on more than :data:`SGD_ABOVE` rows). Give one explicitly when
            fits on parts of a training set (cross-validation) must score like
            the fit on all of it.

    Example:
        >>> ApproximateKernelSVC(C=10.0).get_params()["n_components"]
        1000
    """

    def __init__(self, kernel: str = "rbf", C: float = 1.0, gamma="scale", class_weight=None,
                 n_components: int = 1000, random_state: int = 0, solver: str = "auto"):
        self.kernel = kernel
        self.C = C
        self.gamma = gamma
        self.class_weight = class_weight
        self.n_components = n_components
        self.random_state = random_state
        self.solver = solver

    def fit(self, X, y, sample_weight=None) -> "ApproximateKernelSVC":
        X = np.asarray(X, np.float64)
        if self.kernel not in ("rbf", "linear"):
            raise ValueError(f"kernel is {self.kernel!r}; ApproximateKernelSVC has rbf and linear")
        if self.solver not in ("auto", "liblinear", "sgd"):
            raise ValueError(f"solver is {self.solver!r}; ApproximateKernelSVC has auto, liblinear and sgd")
        self._gamma = self._resolved_gamma(X)
        sgd = (solver_for(len(X)) if self.solver == "auto" else self.solver) == "sgd"
        if self.kernel == "rbf":  # SGD fits float32 rows as they are (half the memory); liblinear needs float64
            self.map_, mapped = _nystroem_map(X, self._gamma, min(int(self.n_components), len(X)), self.random_state,
                                              np.float32 if sgd else np.float64)
        else:
            self.map_, mapped = None, X
        if sgd:
            svm = SGDClassifier(loss="hinge", alpha=1.0 / (float(self.C) * len(mapped)),
                                class_weight=self.class_weight, average=True, max_iter=SGD_EPOCHS, tol=None,
                                random_state=self.random_state)
        else:
            svm = LinearSVC(C=float(self.C), class_weight=self.class_weight, dual="auto", max_iter=5000,
                            random_state=self.random_state)
        self.svm_ = svm.fit(mapped, y, sample_weight=sample_weight)
        self.classes_ = self.svm_.classes_
        return self

    def _resolved_gamma(self, X: np.ndarray) -> float:
        if self.gamma == "scale":
            variance = X.var()
            return 1.0 / (X.shape[1] * variance) if variance > 0 else 1.0
        if self.gamma == "auto":
            return 1.0 / X.shape[1]
        return float(self.gamma)

    def decision_function(self, X) -> np.ndarray:
        check_is_fitted(self, "svm_")
        X = np.asarray(X, np.float64)
        if self.map_ is None:
            return self.svm_.decision_function(X)
        return np.concatenate([self.svm_.decision_function(self.map_.transform(X[start:start + MAP_ROWS]))
                               for start in range(0, len(X), MAP_ROWS)] or [np.zeros(0)])

    def predict(self, X) -> np.ndarray:
        return self.classes_[(self.decision_function(X) > 0).astype(int)]

    # The decision function written as an SVC's (read by tfmed.modes.svm_graph).
    @property
    def support_vectors_(self) -> np.ndarray:
        check_is_fitted(self, "svm_")
        return self.svm_.coef_ if self.map_ is None else self.map_.components_

    @property
    def dual_coef_(self) -> np.ndarray:
        check_is_fitted(self, "svm_")
        if self.map_ is None:
            return np.ones((1, 1))
        return (self.map_.normalization_.T @ self.svm_.coef_.ravel())[None, :]

    @property
    def intercept_(self) -> np.ndarray:
        check_is_fitted(self, "svm_")
        return self.svm_.intercept_
