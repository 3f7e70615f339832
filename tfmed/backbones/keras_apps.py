"""keras.applications backbones as table entries, and the in-model ImageNet preprocessing.

Every model tfmed builds takes raw float32 images on the 0-255 scale; the
:class:`ImagenetPreprocessing` layer at its start applies the backbone's own
ImageNet convention, so no caller needs ``preprocess_input`` (which also
modifies float arrays in place).
"""
from __future__ import annotations

import math
import re

import keras
import numpy as np

from tfmed.backbones.registry import BackboneSpec, register

__all__ = ["ImagenetPreprocessing", "canonicalise_layer_names"]

_KA = "https://storage.googleapis.com/tensorflow/keras-applications"
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="tfmed")
class ImagenetPreprocessing(keras.layers.Layer):
    """Map raw RGB images (0-255, float) to a backbone's ImageNet input convention.

    Modes: ``"caffe"`` (RGB -> BGR, subtract the ImageNet BGR mean), ``"tf"``
    (x / 127.5 - 1), ``"torch"`` (x / 255, then ImageNet mean/std), ``"lite"``
    ((x - 127) / 128, EfficientNet-Lite) and ``"none"`` (identity: the network
    normalises by itself). The layer has no weights and never changes its input.

    Example:
        >>> layer = ImagenetPreprocessing("tf")
        >>> float(layer(np.full((1, 2, 2, 3), 255.0, "float32"))[0, 0, 0, 0])
        1.0
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "tf", "torch", "none", "lite"):
            raise ValueError(f"preprocessing mode {mode!r} is not one of caffe, tf, torch, none, lite")
        self.mode = mode

    def call(self, x):
        x = keras.ops.cast(x, self.compute_dtype)
        if self.mode == "caffe":
            x = keras.ops.flip(x, axis=-1)
            return x - keras.ops.convert_to_tensor(np.array(_CAFFE_MEAN_BGR, "float32"), self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(np.array(_TORCH_MEAN, "float32"), self.compute_dtype)
            std = keras.ops.convert_to_tensor(np.array(_TORCH_STD, "float32"), self.compute_dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "lite":
            return (x - 127.0) / 128.0
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _snake(name: str) -> str:
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def canonicalise_layer_names(model: keras.Model, boundaries=()) -> None:
    """Give automatically named layers the names a fresh Keras session would give them.

    Keras names unnamed layers ``conv2d_37`` from a process-wide counter, so the
    same architecture gets different names in different processes. This renames
    them ``conv2d``, ``conv2d_1`` and so on in graph order, making tap names stable.
    With ``boundaries`` ((prefix, last layer name) pairs, in graph order), each
    renamed layer that has weights also gets the prefix of the block it sits in,
    so that fine-tuning can address it by prefix.

    Example:
        >>> canonicalise_layer_names(model)  # doctest: +SKIP
    """
    counts: dict = {}
    block_index = 0
    renames = []
    for layer in model.layers:
        base = _snake(type(layer).__name__)
        if re.fullmatch(rf"{re.escape(base)}(_\d+)?", layer.name):
            k = counts.get(base, 0)
            counts[base] = k + 1
            renames.append((layer, base if k == 0 else f"{base}_{k}"))
        else:
            renames.append((layer, None))
    renamed = set()
    for layer, fresh in renames:
        if fresh is not None:
            layer.name = fresh
            renamed.add(id(layer))
    if boundaries:
        for layer in model.layers:
            prefix, end = boundaries[min(block_index, len(boundaries) - 1)]
            if layer.name == end:
                block_index += 1
            if layer.weights and id(layer) in renamed:
                layer.name = f"{prefix}{layer.name}"


def _app_builder(fn, **extra):
    def build(inputs, include_top):
        model = fn(include_top=include_top, weights=None, input_tensor=inputs, **extra)
        return model.output
    return build


def _stages_from(names, early, middle, late):
    taps = {f"stage{i + 1}": n for i, n in enumerate(names)}
    taps.update(early=taps[early], middle=taps[middle], late=late)
    return taps


def _effnet_stage_names(depth, repeats=(1, 2, 2, 3, 3, 4, 1)):
    names = []
    for i, r in enumerate(repeats):
        n = int(math.ceil(depth * r))
        names.append(f"block{i + 1}a_project_bn" if n == 1 else f"block{i + 1}{chr(96 + n)}_add")
    return names


A = keras.applications

register(BackboneSpec(
    name="vgg16", builder=_app_builder(A.VGG16), preprocessing="caffe", default_size=224,
    taps=_stages_from([f"block{i}_pool" for i in range(1, 6)], "stage3", "stage4", "block5_pool"),
    blocks=[f"block{i}_" for i in range(1, 6)],
    imagenet_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    imagenet_top_file="vgg16_weights_tf_dim_ordering_tf_kernels.h5",
    imagenet_url=f"{_KA}/vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"))

register(BackboneSpec(
    name="resnet50", builder=_app_builder(A.ResNet50), preprocessing="caffe", default_size=224,
    taps=_stages_from(["pool1_pool", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out",
                       "conv5_block3_out"], "stage3", "stage4", "conv5_block3_out"),
    blocks=["conv1_", "conv2_", "conv3_", "conv4_", "conv5_"],
    imagenet_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    imagenet_top_file="resnet50_weights_tf_dim_ordering_tf_kernels.h5",
    imagenet_url=f"{_KA}/resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"))

register(BackboneSpec(
    name="resnet50_v2", builder=_app_builder(A.ResNet50V2), preprocessing="tf", default_size=224,
    taps=_stages_from(["pool1_pool", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out",
                       "post_relu"], "stage3", "stage4", "post_relu"),
    blocks=["conv1_", "conv2_", "conv3_", "conv4_", "conv5_", "post_"],
    imagenet_file="resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
    imagenet_top_file="resnet50v2_weights_tf_dim_ordering_tf_kernels.h5",
    imagenet_url=f"{_KA}/resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"))

_INCEPTION_BLOCKS = [("stem_", "max_pooling2d_1")] + [(f"mixed{i}_", f"mixed{i}") for i in range(11)]
register(BackboneSpec(
    name="inception_v3", builder=_app_builder(A.InceptionV3), preprocessing="tf", default_size=299,
    min_size=75,
    taps=_stages_from(["max_pooling2d_1", "mixed2", "mixed7", "mixed10"], "stage2", "stage3", "mixed10"),
    blocks=[p for p, _ in _INCEPTION_BLOCKS], block_boundaries=_INCEPTION_BLOCKS,
    imagenet_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    imagenet_top_file="inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
    imagenet_url=f"{_KA}/inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"))

register(BackboneSpec(
    name="densenet121", builder=_app_builder(A.DenseNet121), preprocessing="torch", default_size=224,
    taps=_stages_from(["pool1", "pool2_pool", "pool3_pool", "pool4_pool", "relu"], "stage2", "stage4", "relu"),
    blocks=["conv1_", "conv2_", "pool2_", "conv3_", "pool3_", "conv4_", "pool4_", "conv5_", "bn"],
    imagenet_file="densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    imagenet_top_file="densenet121_weights_tf_dim_ordering_tf_kernels.h5",
    imagenet_url=f"{_KA}/densenet/densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"))

register(BackboneSpec(
    name="mobilenet_v2", builder=_app_builder(A.MobileNetV2), preprocessing="tf", default_size=224,
    taps=_stages_from(["expanded_conv_project_BN", "block_2_add", "block_5_add", "block_9_add",
                       "block_12_add", "block_15_add", "block_16_project_BN"], "stage3", "stage6", "out_relu"),
    blocks=["Conv1", "bn_Conv1", "expanded_conv_"] + [f"block_{i}_" for i in range(1, 17)] + ["Conv_1"],
    imagenet_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    imagenet_top_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
    weights_template="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}{top}.h5",
    imagenet_url=f"{_KA}/mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"))

register(BackboneSpec(
    name="mobilenet_v3_small", builder=_app_builder(A.MobileNetV3Small), preprocessing="none",
    default_size=224,
    taps=_stages_from(["expanded_conv_project_bn", "expanded_conv_2_add", "expanded_conv_5_add",
                       "expanded_conv_7_add", "expanded_conv_10_add"], "stage2", "stage4", "activation_17"),
    blocks=["conv", "expanded_conv_"] + [f"expanded_conv_{i}_" for i in range(1, 11)] + ["conv_1"],
    imagenet_file="weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
    imagenet_top_file="weights_mobilenet_v3_small_224_1.0_float.h5",
    imagenet_url=f"{_KA}/mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"))

register(BackboneSpec(
    name="mobilenet_v3_large", builder=_app_builder(A.MobileNetV3Large), preprocessing="none",
    default_size=224,
    taps=_stages_from(["expanded_conv_add", "expanded_conv_2_add", "expanded_conv_5_add",
                       "expanded_conv_9_add", "expanded_conv_11_add", "expanded_conv_14_add"],
                      "stage3", "stage5", "activation_19"),
    blocks=["conv", "expanded_conv_"] + [f"expanded_conv_{i}_" for i in range(1, 15)] + ["conv_1"],
    imagenet_file="weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
    imagenet_top_file="weights_mobilenet_v3_large_224_1.0_float.h5",
    imagenet_url=f"{_KA}/mobilenet_v3/weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"))

for _variant, _depth, _size, _fn in [("b0", 1.0, 224, A.EfficientNetB0), ("b1", 1.1, 240, A.EfficientNetB1),
                                     ("b2", 1.2, 260, A.EfficientNetB2), ("b3", 1.4, 300, A.EfficientNetB3)]:
    register(BackboneSpec(
        name=f"efficientnet_{_variant}", builder=_app_builder(_fn), preprocessing="none",
        default_size=_size,
        taps=_stages_from(_effnet_stage_names(_depth), "stage3", "stage6", "top_activation"),
        blocks=["stem_"] + [f"block{i}" for i in range(1, 8)] + ["top_"],
        imagenet_file=f"efficientnet{_variant}_notop.h5", imagenet_top_file=f"efficientnet{_variant}.h5",
        imagenet_url=f"https://storage.googleapis.com/keras-applications/efficientnet{_variant}_notop.h5",
        batchnorm_quirk="efficientnet_variance"))

register(BackboneSpec(
    name="efficientnet_v2_b0", builder=_app_builder(A.EfficientNetV2B0), preprocessing="none",
    default_size=224,
    taps=_stages_from(["block1a_project_activation", "block2b_add", "block3b_add", "block4c_add",
                       "block5e_add", "block6h_add"], "stage3", "stage5", "top_activation"),
    blocks=["stem_"] + [f"block{i}" for i in range(1, 7)] + ["top_"],
    imagenet_file="efficientnetv2-b0_notop.h5", imagenet_top_file="efficientnetv2-b0.h5",
    imagenet_url=f"{_KA}/efficientnet_v2/efficientnetv2-b0_notop.h5"))

_CX = "convnext_tiny_"
register(BackboneSpec(
    name="convnext_tiny", builder=_app_builder(A.ConvNeXtTiny), preprocessing="none", default_size=224,
    taps=_stages_from([f"{_CX}stage_0_block_2_identity", f"{_CX}stage_1_block_2_identity",
                       f"{_CX}stage_2_block_8_identity", f"{_CX}stage_3_block_2_identity"],
                      "stage2", "stage3", "layer_normalization"),
    blocks=[f"{_CX}stem", f"{_CX}stage_0", f"{_CX}downsampling_block_0", f"{_CX}stage_1",
            f"{_CX}downsampling_block_1", f"{_CX}stage_2", f"{_CX}downsampling_block_2", f"{_CX}stage_3",
            "layer_normalization"],
    imagenet_file="convnext_tiny_notop.h5", imagenet_top_file="convnext_tiny.h5",
    imagenet_url=f"{_KA}/convnext/convnext_tiny_notop.h5"))

_XCEPTION_BLOCKS = ([("block1_", "block1_conv2_act"), ("block2_", "add"), ("block3_", "add_1"),
                     ("block4_", "add_2")] + [(f"block{i}_", f"add_{i - 2}") for i in range(5, 14)]
                    + [("block14_", "block14_sepconv2_act")])
register(BackboneSpec(
    name="xception", builder=_app_builder(A.Xception), preprocessing="tf", default_size=299, min_size=71,
    taps=_stages_from(["block1_conv2_act", "add", "add_1", "add_2", "add_10", "add_11",
                       "block14_sepconv2_act"], "stage3", "stage5", "block14_sepconv2_act"),
    blocks=[p for p, _ in _XCEPTION_BLOCKS], block_boundaries=_XCEPTION_BLOCKS,
    imagenet_file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
    imagenet_top_file="xception_weights_tf_dim_ordering_tf_kernels.h5",
    imagenet_url=f"{_KA}/xception/xception_weights_tf_dim_ordering_tf_kernels_notop.h5"))
