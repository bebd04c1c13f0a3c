import sys
import types

import pytest
import torch
from torch import nn

from storm.nn import (
    NovaeExpressionEncoder,
    TimmImageEncoder,
    WeightsUnavailableError,
    layerwise_lr_groups,
    parameter_layer_ids,
)


class TinyViT(nn.Module):
    """Stand-in for a timm ViT: class token, patch embedding, blocks, norm, head; returns tokens."""

    num_prefix_tokens = 1

    def __init__(self, dim: int = 8, depth: int = 3, matcher: bool = False) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embed = nn.Conv2d(3, dim, 8, stride=8)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 4)
        self._matcher = matcher
        if matcher:
            self.group_matcher = self._group_matcher

    def _group_matcher(self, coarse: bool = False):
        return {"stem": r"^cls_token|^patch_embed", "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))]}

    def no_weight_decay(self):
        return {"cls_token"}

    def forward(self, x):
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], 1)
        for b in self.blocks:
            t = t + b(t)
        return self.norm(t)


def _fake_timm(monkeypatch, create_model):
    timm = types.ModuleType("timm")
    timm.create_model = create_model
    timm.layers = types.SimpleNamespace(SwiGLUPacked=object)
    timm.data = types.SimpleNamespace(
        resolve_model_data_config=lambda m: {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.25,) * 3}
    )
    monkeypatch.setitem(sys.modules, "timm", timm)
    return timm


def test_timm_encoder_raises_clear_import_error_without_timm(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(ImportError, match=r"pip install storm-st\[timm\]"):
        TimmImageEncoder("hf-hub:bioptimus/H0-mini")


def test_novae_encoder_raises_clear_import_error_without_novae(monkeypatch):
    monkeypatch.setitem(sys.modules, "novae", None)
    with pytest.raises(ImportError, match="pip install novae"):
        NovaeExpressionEncoder(["CD3E"], 16)


def test_timm_encoder_loads_pools_and_normalises(monkeypatch):
    calls = []

    def create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs))
        torch.manual_seed(0)
        return TinyViT()

    _fake_timm(monkeypatch, create_model)
    enc = TimmImageEncoder("hf-hub:bioptimus/H0-mini", pool="cls+mean")
    name, pretrained, kwargs = calls[0]
    assert name == "hf-hub:bioptimus/H0-mini"
    assert pretrained is True
    assert kwargs["mlp_layer"] is sys.modules["timm"].layers.SwiGLUPacked  # H0-mini's model-card kwargs
    assert kwargs["act_layer"] is torch.nn.SiLU
    assert kwargs["num_classes"] == 0
    assert enc.input_size == 32
    assert enc.out_dim == 16
    x = torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8)  # resized to 32 px inside
    assert enc(x).shape == (2, 16)
    assert TimmImageEncoder("vit_tiny", pool="cls").out_dim == 8
    frozen = TimmImageEncoder("vit_tiny", freeze=True)
    assert frozen.trainable is False
    assert not any(p.requires_grad for p in frozen.parameters())


def test_timm_encoder_offline_error_gives_advice(monkeypatch):
    def offline(name, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load this file")

    _fake_timm(monkeypatch, offline)
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE") as info:
        TimmImageEncoder("hf-hub:bioptimus/H0-mini")
    assert "weights_path" in str(info.value)
    assert "ConvImageEncoder" in str(info.value)

    hub_error = type("GatedRepoError", (Exception,), {"__module__": "huggingface_hub.errors"})

    def gated(name, **kwargs):
        raise hub_error("401 Client Error")

    _fake_timm(monkeypatch, gated)
    with pytest.raises(WeightsUnavailableError, match="gated"):
        TimmImageEncoder("hf-hub:MahmoodLab/UNI")

    def unknown(name, **kwargs):
        raise RuntimeError(f"Unknown model ({name})")

    _fake_timm(monkeypatch, unknown)
    with pytest.raises(ValueError, match="knows no model"):
        TimmImageEncoder("not_a_model")
    with pytest.raises(FileNotFoundError, match="weights_path"):
        TimmImageEncoder("vit_tiny", weights_path="/nonexistent/model.safetensors")


def test_layerwise_lr_decay_by_module_depth():
    model = TinyViT()
    ids = parameter_layer_ids(model)
    assert ids["cls_token"] == 0
    assert ids["patch_embed.weight"] == 1
    assert ids["blocks.0.1.weight"] < ids["blocks.1.1.weight"] < ids["blocks.2.1.weight"] < ids["head.weight"]
    groups = layerwise_lr_groups(model, base_lr=1e-3, decay=0.7, weight_decay=0.05)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert lr_of[id(model.head.weight)] == pytest.approx(1e-3)
    block_lrs = [lr_of[id(b[1].weight)] for b in model.blocks]
    assert block_lrs == sorted(block_lrs)
    assert len(set(block_lrs)) == 3
    assert block_lrs[1] / block_lrs[2] == pytest.approx(0.7)
    assert lr_of[id(model.cls_token)] < block_lrs[0]
    assert wd_of[id(model.blocks[0][1].weight)] == 0.05
    assert wd_of[id(model.blocks[0][1].bias)] == 0.0
    assert wd_of[id(model.norm.weight)] == 0.0
    assert wd_of[id(model.cls_token)] == 0.0  # listed by the model's no_weight_decay()
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    torch.optim.AdamW(groups)  # accepted as is


def test_layerwise_lr_decay_with_timm_style_group_matcher():
    model = TinyViT(matcher=True)
    ids = parameter_layer_ids(model)
    assert ids["cls_token"] == ids["patch_embed.weight"] == 0
    assert [ids[f"blocks.{i}.1.weight"] for i in range(3)] == [1, 2, 3]
    assert ids["norm.weight"] == 3  # (99999,) suffix: merged into the previous group
    assert ids["head.weight"] == 4  # unmatched: top
    model.blocks[0].requires_grad_(False)
    groups = layerwise_lr_groups(model, base_lr=1.0, decay=0.5)
    assert not any(p is model.blocks[0][1].weight for g in groups for p in g["params"])
    assert {g["layer_id"]: g["lr"] for g in groups}[2] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="decay"):
        layerwise_lr_groups(model, 1.0, decay=0.0)


def test_timm_encoder_llrd_goes_through_the_backbone_matcher(monkeypatch):
    _fake_timm(monkeypatch, lambda name, **kw: TinyViT(matcher=True))
    enc = TimmImageEncoder("vit_tiny")
    ids = parameter_layer_ids(enc)
    assert ids["backbone.blocks.0.1.weight"] == 1
    assert ids["backbone.head.weight"] == 4
