"""The backbone table: one :class:`BackboneSpec` entry per ImageNet backbone.

Adding a backbone is adding one entry with :func:`register` (the Keras
applications live in :mod:`tfmed.backbones.keras_apps`, EfficientNet-Lite in
:mod:`tfmed.backbones.efficientnet_lite`).
"""
from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Callable

from tfmed.errors import TfmedError

__all__ = ["BackboneSpec", "UnknownBackboneError", "register", "list_backbones", "get_spec"]

PREPROCESSING_MODES = ("caffe", "tf", "torch", "none", "lite")


class UnknownBackboneError(TfmedError):
    """A backbone name that is not in the table."""


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: how to build it, where its taps and blocks are, which weights it expects.

    Attributes:
        name: lower_snake name used by :func:`tfmed.backbones.create` (e.g. ``"resnet50"``).
        builder: ``builder(inputs, include_top) -> output tensor``; ``inputs`` is the
            already-preprocessed symbolic image tensor. Weights are random; tfmed loads them.
        preprocessing: the ImageNet input convention the weights were trained with:
            ``"caffe"`` (BGR, mean subtracted), ``"tf"`` ([-1, 1]), ``"torch"``
            (ImageNet mean/std), ``"lite"`` ((x - 127) / 128) or ``"none"``
            (the network normalises 0-255 inputs itself).
        default_size: the ImageNet training resolution (square).
        min_size: the smallest input side the architecture accepts.
        taps: tap name -> layer name; always has ``"early"``, ``"middle"``, ``"late"``
            and ``"stage1"``.. ``"stageN"`` (the output of each block group).
        blocks: layer-name prefixes, input -> output, partitioning the layers with
            trainable weights; fine-tuning unfreezes them from the end. A layer belongs
            to the longest prefix it starts with (see :meth:`block_of`).
        imagenet_file: the file name of the no-top ImageNet weights at ``default_size``.
        imagenet_top_file: the file name of the ImageNet weights with the 1000-class head.
        imagenet_url: where ``imagenet_file`` is published.
        weights_template: ``imagenet_file`` with ``{top}`` / ``{rows}`` placeholders when
            the file name depends on the head or the input size (MobileNetV2).
        block_boundaries: for networks with automatically named layers: (prefix, last
            layer name) pairs used to give those layers a block prefix.
        batchnorm_quirk: extra loading rules (``"efficientnet_variance"``).

    Example:
        >>> spec = get_spec("resnet50")
        >>> spec.taps["late"], spec.blocks[-1]
        ('conv5_block3_out', 'conv5_')
    """

    name: str
    builder: Callable
    preprocessing: str
    default_size: int
    taps: dict
    blocks: list
    imagenet_file: str
    imagenet_url: str
    imagenet_top_file: str = ""
    min_size: int = 32
    family: str = "keras"
    block_boundaries: list = field(default_factory=builtins.list)
    weights_template: str = ""
    batchnorm_quirk: str = ""

    def __post_init__(self):
        if self.preprocessing not in PREPROCESSING_MODES:
            raise ValueError(f"backbone {self.name!r}: preprocessing {self.preprocessing!r} "
                             f"is not one of {PREPROCESSING_MODES}")
        missing = [t for t in ("early", "middle", "late", "stage1") if t not in self.taps]
        if missing:
            raise ValueError(f"backbone {self.name!r}: taps lack {missing}")

    def weights_file(self, include_top: bool = False, size: int | None = None) -> str:
        """The exact ImageNet weights file name Keras expects for this head and input size.

        Example:
            >>> get_spec("mobilenet_v2").weights_file(include_top=False, size=96)
            'mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5'
        """
        if self.weights_template:
            rows = size if size in (96, 128, 160, 192, 224) else 224
            return self.weights_template.format(top="" if include_top else "_no_top", rows=rows)
        return self.imagenet_top_file if include_top else self.imagenet_file

    def weights_url(self, include_top: bool = False, size: int | None = None) -> str:
        """The URL the file named by :meth:`weights_file` is published at.

        Example:
            >>> get_spec("vgg16").weights_url().endswith("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
            True
        """
        base = self.imagenet_url.rsplit("/", 1)[0]
        return f"{base}/{self.weights_file(include_top, size)}"

    def stage_taps(self) -> list:
        """Names of the ``stageN`` taps in order.

        Example:
            >>> get_spec("resnet50").stage_taps()
            ['stage1', 'stage2', 'stage3', 'stage4', 'stage5']
        """
        stages = [t for t in self.taps if t.startswith("stage") and t[5:].isdigit()]
        return sorted(stages, key=lambda t: int(t[5:]))

    def block_of(self, layer_name: str) -> str | None:
        """The block prefix a layer belongs to (longest matching prefix), or None.

        Example:
            >>> get_spec("resnet50").block_of("conv4_block2_1_conv")
            'conv4_'
        """
        matches = [b for b in self.blocks if layer_name.startswith(b)]
        return max(matches, key=len) if matches else None


# Filled by the entry modules (keras_apps, efficientnet_lite) as they are imported;
# tfmed/backbones/__init__.py imports them, so the table is complete whenever this
# package is used. This module imports none of them.
_REGISTRY: dict = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add one backbone to the table (names must be unique).

    Example:
        >>> register(dataclasses.replace(get_spec("resnet50"), name="my_resnet"))  # doctest: +SKIP
    """
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list:
    """All backbone names, sorted.

    Example:
        >>> "efficientnet_lite0" in list_backbones()
        True
    """
    return sorted(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    """The table entry for ``name``; an unknown name raises :class:`UnknownBackboneError`.

    Example:
        >>> get_spec("efficientnet_lite0").default_size
        224
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise UnknownBackboneError(
            f"unknown backbone {name!r}; available backbones: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]
