"""tfmed.training.freezing: block selection, BatchNorm kept frozen, nested backbones."""
import keras
import numpy as np
import pytest

from tfmed.training.freezing import FreezingError, blocks_for_amount, freeze, trainable_blocks, unfreeze_top

BLOCKS = ["block1_", "block2_", "block3_"]


def small_backbone(name="backbone"):
    inputs = keras.Input((16, 16, 1))
    x = inputs
    for b in (1, 2, 3):
        x = keras.layers.Conv2D(4, 3, padding="same", name=f"block{b}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{b}_bn")(x)
        x = keras.layers.ReLU(name=f"block{b}_relu")(x)
    return keras.Model(inputs, x, name=name)


def classifier():
    backbone = small_backbone()
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(backbone.output)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="head_dense")(x)
    return keras.Model(backbone.input, outputs)


def trainable_names(model):
    return sorted({v.path.split("/")[-2] for v in model.trainable_variables})


@pytest.mark.parametrize("amount,expected", [
    (0, []), (1, ["block3_"]), (2, ["block2_", "block3_"]), ("all", BLOCKS), (3, BLOCKS),
    (0.5, ["block2_", "block3_"]), (1 / 3, ["block3_"]), (1.0, BLOCKS), ("2", ["block2_", "block3_"]),
])
def test_blocks_for_amount(amount, expected):
    assert blocks_for_amount(BLOCKS, amount) == expected


@pytest.mark.parametrize("amount,message", [
    (4, "asks for 4 blocks but the backbone has 3"), (-1, "asks for -1"), (1.5, "0 < f <= 1"),
    ("some", "not understood"), (True, "must be an int"), (None, "must be an int"),
])
def test_bad_amounts_raise(amount, message):
    with pytest.raises(FreezingError, match=message):
        blocks_for_amount(BLOCKS, amount)


def test_unfreeze_top_sets_exact_state_and_keeps_batchnorm_frozen():
    model = classifier()
    freeze(model, BLOCKS)
    assert trainable_names(model) == ["head_dense"]
    assert unfreeze_top(model, BLOCKS, 2) == ["block2_", "block3_"]
    assert trainable_names(model) == ["block2_conv", "block3_conv", "head_dense"]
    assert all(not layer.trainable for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert trainable_blocks(model, BLOCKS) == ["block2_", "block3_"]
    # Going back to fewer blocks refreezes the lower ones.
    assert unfreeze_top(model, BLOCKS, 1) == ["block3_"]
    assert trainable_names(model) == ["block3_conv", "head_dense"]
    assert unfreeze_top(model, BLOCKS, 0) == []
    assert trainable_names(model) == ["head_dense"]


def test_freeze_without_blocks_freezes_everything():
    model = classifier()
    freeze(model)
    assert model.trainable_variables == []
    assert model.trainable  # the container stays on, so unfreezing works
    unfreeze_top(model, BLOCKS, "all")
    assert trainable_names(model) == ["block1_conv", "block2_conv", "block3_conv"]


def test_nested_backbone_frozen_as_a_whole_can_be_partly_unfrozen():
    backbone = small_backbone()
    backbone.trainable = False
    inputs = keras.Input((16, 16, 1))
    x = backbone(inputs, training=False)
    outputs = keras.layers.Dense(1, name="head_dense")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    assert trainable_names(model) == ["head_dense"]
    unfreeze_top(model, BLOCKS, 1)
    assert trainable_names(model) == ["block3_conv", "head_dense"]


def test_longest_prefix_decides_the_block():
    inputs = keras.Input((4,))
    x = keras.layers.Dense(2, name="block1_a")(inputs)
    x = keras.layers.Dense(2, name="block10_a")(x)
    model = keras.Model(inputs, x)
    freeze(model)
    assert unfreeze_top(model, ["block1", "block10"], 1) == ["block10"]
    assert trainable_names(model) == ["block10_a"]


def test_unknown_prefix_and_bad_blocks_raise():
    model = classifier()
    with pytest.raises(FreezingError, match=r"\['stage9_'\] match no layer"):
        unfreeze_top(model, BLOCKS + ["stage9_"], 1)
    with pytest.raises(FreezingError, match="list of layer-name prefixes"):
        unfreeze_top(model, "block1_", 1)
    with pytest.raises(FreezingError, match="listed twice"):
        unfreeze_top(model, ["block1_", "block1_"], 1)
    with pytest.raises(FreezingError, match="keras Model"):
        freeze(object())


def test_freeze_refuses_prefixes_that_match_no_layer_and_freezes_nothing():
    model = classifier()
    before = len(model.trainable_weights)
    with pytest.raises(FreezingError, match=r"\['stage9_'\] match no layer of model "):
        freeze(model, BLOCKS + ["stage9_"])
    assert len(model.trainable_weights) == before


def test_a_backbone_frozen_with_another_backbones_blocks_names_its_own():
    from tfmed import backbones
    model = backbones.create("efficientnet_lite0", weights=None, input_shape=(32, 32, 3))
    model.trainable = True
    wanted = r"\['conv1_', .*\] match no layer .*efficientnet_lite0.*: \['stem_', 'block1'"
    with pytest.raises(FreezingError, match=wanted):
        freeze(model, backbones.get_spec("resnet50").blocks)
    assert model.trainable_weights
    freeze(model, backbones.get_spec("efficientnet_lite0").blocks)
    assert trainable_names(model) == []


def _fit_and_diff(model, bn_trainable=False):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(32, 16, 16, 1)) * 3 + 5).astype("float32")
    y = (rng.random(32) > 0.5).astype("float32")
    if bn_trainable:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = True
    model.compile(keras.optimizers.SGD(0.05), "binary_crossentropy")
    before = {v.path: v.numpy().copy() for v in model.weights}
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return {k: float(np.abs(v.numpy() - before[k]).max()) for k, v in ((v.path, v) for v in model.weights)}


def test_batchnorm_statistics_stay_fixed_while_convolutions_train():
    model = classifier()
    freeze(model, BLOCKS)
    unfreeze_top(model, BLOCKS, "all")
    diff = _fit_and_diff(model)
    for b in (1, 2, 3):
        assert diff[f"block{b}_bn/moving_mean"] == 0.0
        assert diff[f"block{b}_bn/moving_variance"] == 0.0
        assert diff[f"block{b}_bn/gamma"] == 0.0
        assert diff[f"block{b}_conv/kernel"] > 0.0
    # Control: with BatchNorm trainable the moving statistics do move (what unfreeze_top prevents).
    control = classifier()
    diff = _fit_and_diff(control, bn_trainable=True)
    assert diff["block1_bn/moving_mean"] > 0.0


def test_unfreeze_top_leaves_a_batchnorm_outside_every_block_as_it_was():
    inputs = keras.Input((8,))
    x = keras.layers.Dense(4, name="block1_dense")(inputs)
    x = keras.layers.BatchNormalization(name="block1_bn")(x)
    x = keras.layers.Dense(4, name="head_dense")(x)
    x = keras.layers.BatchNormalization(name="head_bn")(x)   # the user's head: in no block
    model = keras.Model(inputs, keras.layers.Dense(1, name="head_out")(x))
    freeze(model, ["block1_"])
    unfreeze_top(model, ["block1_"], "all")
    assert model.get_layer("head_bn").trainable is True
    assert model.get_layer("block1_bn").trainable is False and model.get_layer("block1_dense").trainable
    model.get_layer("head_bn").trainable = False
    unfreeze_top(model, ["block1_"], 0)
    assert model.get_layer("head_bn").trainable is False and model.get_layer("head_dense").trainable


def test_dotted_names_in_the_training_and_backbones_sources_exist():
    """Every tfmed.training.X / tfmed.backbones.X named in a message or docstring can be imported or looked up."""
    import importlib
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "tfmed"
    names = set()
    for package in ("training", "backbones"):
        for source in (root / package).glob("*.py"):
            names |= set(re.findall(r"tfmed\.(?:training|backbones)\.[A-Za-z_][\w.]*[A-Za-z_0-9]", source.read_text()))
    assert "tfmed.training.add_threshold_layer" in names and "tfmed.training.StagedUnfreeze" in names
    missing = []
    for name in sorted(names):
        parts = name.split(".")
        for cut in range(len(parts), 1, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attribute in parts[cut:]:
                    obj = getattr(obj, attribute)
            except AttributeError:
                missing.append(name)
            break
    assert not missing, missing


def test_a_fraction_of_the_blocks_is_rounded_up_to_whole_blocks():
    blocks = ["b1_", "b2_", "b3_", "b4_"]
    assert blocks_for_amount(blocks, 0.3) == ["b3_", "b4_"]   # 1.2 blocks: 2
    assert blocks_for_amount(blocks, 0.1) == ["b4_"]          # 0.4 of a block: 1, never none
    assert blocks_for_amount(blocks, 0.6) == ["b2_", "b3_", "b4_"]
