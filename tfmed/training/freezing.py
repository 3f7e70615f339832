"""Freezing and unfreezing backbone blocks for transfer learning.

A backbone is described by an ordered list of layer-name prefixes, one per
block, from the input to the output (``tfmed.backbones.get_spec(name).blocks``).
:func:`freeze` makes layers non-trainable; :func:`unfreeze_top` makes the top
``amount`` blocks trainable and every other listed block frozen.

Every ``BatchNormalization`` layer inside a listed block is kept ``trainable = False``
(one outside every block, e.g. in a head, keeps its state): in Keras 3 a
BatchNormalization layer whose ``trainable`` flag is False runs in inference
mode (its moving mean and variance stay fixed), whereas building the model with
``base(x, training=False)`` does not protect them once the base is unfrozen.

Layers are found recursively, so a backbone nested inside a larger model (as a
sub-model layer) is handled as well as a flat functional model. A layer belongs
to the block whose prefix is the LONGEST prefix of its name, so ``block1`` and
``block10`` can both be listed.

Example:
    >>> import keras
    >>> inputs = keras.Input((8, 8, 1))
    >>> x = keras.layers.Conv2D(2, 3, name="block1_conv")(inputs)
    >>> x = keras.layers.BatchNormalization(name="block1_bn")(x)
    >>> x = keras.layers.Conv2D(2, 3, name="block2_conv")(x)
    >>> model = keras.Model(inputs, x)
    >>> _ = freeze(model)
    >>> unfreeze_top(model, ["block1_", "block2_"], 1)
    ['block2_']
    >>> [layer.name for layer in model.layers if layer.trainable]
    ['block2_conv']
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import keras

from tfmed.errors import TfmedError


class FreezingError(TfmedError):
    """A freeze or unfreeze request names no blocks, an unknown amount, or unmatched prefixes."""


def iter_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Every leaf and container layer inside ``model``, depth first (``model`` excluded).

    Example:
        >>> import keras
        >>> inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")], name="inner")
        >>> outer = keras.Sequential([keras.Input((3,)), inner])
        >>> [layer.name for layer in iter_layers(outer)]
        ['inner', 'd']
    """
    found = []
    for layer in getattr(model, "layers", None) or getattr(model, "_layers", []):
        found.append(layer)
        if _is_container(layer):
            found.extend(iter_layers(layer))
    return found


def freeze(model: keras.layers.Layer, blocks: Sequence[str] | None = None) -> keras.layers.Layer:
    """Make layers non-trainable and return ``model``.

    With ``blocks=None`` every layer of ``model`` is frozen (the usual first
    step on a backbone before a classification head is put on top). With a
    list of block prefixes only the layers belonging to those blocks are
    frozen; other layers (a head, for instance) keep their state. A prefix
    that matches no layer of ``model`` raises FreezingError.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="block1_dense"),
        ...                           keras.layers.Dense(1, name="head")])
        >>> _ = freeze(model, ["block1_"])
        >>> [(layer.name, layer.trainable) for layer in model.layers]
        [('block1_dense', False), ('head', True)]
    """
    _check_model(model)
    if blocks is None:
        _ensure_containers_trainable(model)
        for layer in iter_layers(model):
            if not _is_container(layer):
                layer.trainable = False
        return model
    prefixes = _check_blocks(blocks)
    leaves = _leaf_blocks(model, prefixes)
    _check_matched(model, leaves, prefixes)
    _ensure_containers_trainable(model)
    for layer, block in leaves:
        if block is not None:
            layer.trainable = False
    return model


def blocks_for_amount(blocks: Sequence[str], amount: int | float | str) -> list[str]:
    """The top block prefixes that ``amount`` selects, in input-to-output order.

    ``amount`` is a number of top blocks (an int, 0 for none), a fraction of
    the blocks (a float with 0 < f <= 1, rounded up to whole blocks), or
    ``"all"``.

    Example:
        >>> blocks_for_amount(["b1_", "b2_", "b3_", "b4_"], 0.5)
        ['b3_', 'b4_']
        >>> blocks_for_amount(["b1_", "b2_"], "all")
        ['b1_', 'b2_']
    """
    prefixes = _check_blocks(blocks)
    total = len(prefixes)
    if isinstance(amount, str):
        text = amount.strip().lower()
        if text == "all":
            count = total
        elif text.isdigit():
            count = int(text)
        else:
            raise FreezingError(f"unfreeze amount {amount!r} is not understood; use a number of top "
                                f"blocks (0..{total}), a fraction 0 < f <= 1, or 'all'")
    elif isinstance(amount, bool) or not isinstance(amount, numbers.Real):
        raise FreezingError(f"unfreeze amount must be an int, a fraction or 'all', got {amount!r}")
    elif isinstance(amount, numbers.Integral):
        count = int(amount)
    else:
        fraction = float(amount)
        if fraction == 0.0:
            count = 0
        elif not 0.0 < fraction <= 1.0:
            raise FreezingError(f"unfreeze fraction {amount!r} must satisfy 0 < f <= 1 "
                                f"(write an int for a number of blocks, or 'all')")
        else:
            count = math.ceil(fraction * total - 1e-9)
    if count < 0 or count > total:
        raise FreezingError(f"unfreeze amount {amount!r} asks for {count} blocks but the backbone has "
                            f"{total} ({', '.join(prefixes)}); use 0..{total} or 'all'")
    return prefixes[total - count:] if count else []


def unfreeze_top(model: keras.layers.Layer, blocks: Sequence[str], amount: int | float | str) -> list[str]:
    """Make the top ``amount`` blocks of ``model`` trainable; return their prefixes.

    Layers of the selected blocks become trainable, layers of the other listed
    blocks become frozen, layers outside every block (e.g. the head) keep their
    current state (a BatchNormalization layer there included), and every
    BatchNormalization layer inside a listed block is set non-trainable so its
    moving statistics stay fixed. After calling this inside ``fit`` the
    train function must be rebuilt (``tfmed.training.StagedUnfreeze`` does it);
    outside ``fit``, compile again.

    Raises FreezingError when a block prefix matches no layer of ``model``.

    Example:
        >>> import keras
        >>> inputs = keras.Input((4,))
        >>> x = keras.layers.Dense(3, name="block1_dense")(inputs)
        >>> x = keras.layers.Dense(3, name="block2_dense")(x)
        >>> model = keras.Model(inputs, keras.layers.Dense(1, name="head")(x))
        >>> _ = freeze(model, ["block1_", "block2_"])
        >>> unfreeze_top(model, ["block1_", "block2_"], "all")
        ['block1_', 'block2_']
    """
    _check_model(model)
    prefixes = _check_blocks(blocks)
    selected = set(blocks_for_amount(prefixes, amount))
    leaves = _leaf_blocks(model, prefixes)
    _check_matched(model, leaves, prefixes)
    _ensure_containers_trainable(model)
    for layer, block in leaves:
        if block is not None:
            layer.trainable = block in selected and not isinstance(layer, keras.layers.BatchNormalization)
    return [prefix for prefix in prefixes if prefix in selected]


def trainable_blocks(model: keras.layers.Layer, blocks: Sequence[str]) -> list[str]:
    """Block prefixes that currently have at least one trainable weight.

    Example:
        >>> import keras
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="block1_dense")])
        >>> trainable_blocks(freeze(model), ["block1_"])
        []
    """
    prefixes = _check_blocks(blocks)
    trainable_ids = {id(variable) for variable in model.trainable_variables}
    active = {block for layer, block in _leaf_blocks(model, prefixes)
              if block is not None and any(id(v) in trainable_ids for v in layer.weights)}
    return [prefix for prefix in prefixes if prefix in active]


def _check_model(model) -> None:
    if not isinstance(model, keras.layers.Layer):
        raise FreezingError(f"expected a keras Model or Layer, got {type(model).__name__}")


def _check_blocks(blocks: Iterable[str] | None) -> list[str]:
    if isinstance(blocks, str) or blocks is None:
        raise FreezingError(f"blocks must be a list of layer-name prefixes such as ['block1_', 'block2_'], "
                            f"got {blocks!r}")
    prefixes = list(blocks)
    if not prefixes:
        raise FreezingError("blocks is empty; give the backbone's ordered block prefixes")
    bad = [prefix for prefix in prefixes if not isinstance(prefix, str) or not prefix]
    if bad:
        raise FreezingError(f"block prefixes must be non-empty strings; got {bad}")
    duplicates = sorted({prefix for prefix in prefixes if prefixes.count(prefix) > 1})
    if duplicates:
        raise FreezingError(f"block prefixes are listed twice: {duplicates}")
    return prefixes


def _leaf_blocks(model, prefixes: Sequence[str]) -> list[tuple]:
    """Each leaf layer of ``model`` with its block: the longest prefix of its own name or, failing that, of
    the innermost sub-model holding it (a block Keras builds as a sub-model, as ConvNeXt's downsampling blocks,
    whose layers are named otherwise); None outside every block.

    Example:
        >>> import keras
        >>> down = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="down_dense_0")], name="down_0")
        >>> model = keras.Sequential([keras.Input((4,)), down, keras.layers.Dense(1, name="head")])
        >>> [(layer.name, block) for layer, block in _leaf_blocks(model, ["down_0"])]
        [('down_dense_0', 'down_0'), ('head', None)]
    """
    found = []
    for layer in getattr(model, "layers", None) or getattr(model, "_layers", []):
        block = _block_of(layer.name, prefixes)
        if _is_container(layer):
            found.extend((leaf, own or block) for leaf, own in _leaf_blocks(layer, prefixes))
        else:
            found.append((layer, block))
    return found


def _check_matched(model, leaves: list[tuple], prefixes: list[str]) -> None:
    """Raise FreezingError naming the ``prefixes`` that match none of the ``leaves`` (layers of ``model`` with
    their blocks)."""
    matched = {block for _, block in leaves}
    missing = [prefix for prefix in prefixes if prefix not in matched]
    if missing:
        raise FreezingError(f"block prefix(es) {missing} match no layer of model {model.name!r}; "
                            f"{_model_blocks([layer.name for layer in iter_layers(model)])}")


def _model_blocks(names: list[str]) -> str:
    """A hint: the block lists of the registered backbones whose every prefix matches one of ``names``."""
    from tfmed.backbones import get_spec, list_backbones  # the error path only: no backbones import otherwise
    fits: dict[tuple, list[str]] = {}
    for backbone in list_backbones():
        blocks = tuple(get_spec(backbone).blocks)
        if all(any(name.startswith(prefix) for name in names) for prefix in blocks):
            fits.setdefault(blocks, []).append(backbone)
    fits = {blocks: found for blocks, found in fits.items()  # not a list that a longer fitting one contains
            if not any(set(blocks) < set(other) for other in fits)}
    if not fits:
        return f"check the backbone's block list (first layers: {names[:5]})"
    return "its layers fit the blocks of " + "; ".join(
        f"{', '.join(backbones)}: {list(blocks)}" for blocks, backbones in fits.items()) + \
        " (tfmed.backbones.get_spec(name).blocks)"


def _block_of(name: str, prefixes: Sequence[str]) -> str | None:
    """The longest listed prefix of ``name`` (so 'block10_' wins over 'block1')."""
    best = None
    for prefix in prefixes:
        if name.startswith(prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    return best


def _is_container(layer) -> bool:
    return isinstance(layer, keras.Model) or bool(getattr(layer, "layers", None))


def _ensure_containers_trainable(model) -> None:
    """Switch container models on without touching their leaf layers' flags.

    Setting ``trainable`` on a container cascades to every sub-layer, so the
    leaf states are recorded first and restored afterwards.
    """
    containers = [model] + [layer for layer in iter_layers(model) if _is_container(layer)]
    if all(container.trainable for container in containers):
        return
    leaves = [layer for layer in iter_layers(model) if not _is_container(layer)]
    states = [(layer, layer.trainable) for layer in leaves]
    for container in containers:
        if not container.trainable:
            container.trainable = True
    for layer, state in states:
        layer.trainable = state
