"""Datasets shipped inside tfmed, by name.

:data:`DATASETS` maps a name usable as ``data.source`` to an
:class:`EmbeddedDataset`; adding a dataset is adding one entry.

* ``"pneumonia_mnist"``: MedMNIST v2 PneumoniaMNIST, official train and
  validation splits, 28x28 grey, classes normal / pneumonia (CC BY 4.0,
  Kermany et al. 2018 and Yang et al. 2023; see ``pneumoniamnist/LICENSE``).

Example:
    >>> table = load_pneumonia_mnist()
    >>> table.images.shape, table.frame.loc[17, "image"], table.frame.loc[17, "patient_id"]
    ((5232, 28, 28), 'pneumoniamnist_trainval.npz#train/17', 'train-17')
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tfmed.data.sources.medmnist import load_medmnist
from tfmed.data.table import ImageTable

# The shipped files live in tfmed/datasets/NAME/ (package data, with their licence).
DATA_DIR = Path(__file__).resolve().parents[2] / "datasets"
PNEUMONIA_MNIST_FILE = DATA_DIR / "pneumoniamnist" / "pneumoniamnist_trainval.npz"


@dataclass(frozen=True)
class EmbeddedDataset:
    """A dataset shipped with tfmed.

    Attributes:
        name: the ``data.source`` name.
        description: one line on what it is.
        licence: licence and attribution.
        load: function returning the :class:`ImageTable`.

    Example:
        >>> DATASETS["pneumonia_mnist"].licence.startswith("CC BY 4.0")
        True
    """

    name: str
    description: str
    licence: str
    load: Callable[[], ImageTable]


def load_pneumonia_mnist() -> ImageTable:
    """The embedded PneumoniaMNIST train (4708) and val (524) images, 28x28 uint8.

    Each image is its own patient (the source has no patient ids), so
    ``patient_id`` is "train-17" for the 18th training image. There is no
    test split: :func:`tfmed.data.splits.ensure_splits` carves one out of
    train, by patient and stratified.

    Example:
        >>> table = load_pneumonia_mnist()
        >>> table.class_counts()
        {'normal': 1349, 'pneumonia': 3883}
    """
    table = load_medmnist(PNEUMONIA_MNIST_FILE, classes=["normal", "pneumonia"], task="binary")
    table.source = "pneumonia_mnist (embedded MedMNIST v2 PneumoniaMNIST train+val, CC BY 4.0)"
    return table


DATASETS: dict[str, EmbeddedDataset] = {
    "pneumonia_mnist": EmbeddedDataset(
        name="pneumonia_mnist",
        description="MedMNIST v2 PneumoniaMNIST train+val, 28x28 grey paediatric chest X-rays, "
                    "normal vs pneumonia",
        licence="CC BY 4.0; Kermany et al., Cell 2018; Yang et al., Scientific Data 2023 (MedMNIST v2)",
        load=load_pneumonia_mnist,
    ),
}
