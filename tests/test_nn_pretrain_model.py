import json

import pytest
import torch

from storm.nn import BatchKeys, StormNetConfig, StormPretrainModel

B, W, G, PX = 3, 9, 20, 16


def _config(**kw) -> StormNetConfig:
    base = dict(
        n_genes=G,
        dim=32,
        depth=2,
        heads=2,
        window_size=W,
        conv_widths=(8, 16),
        image_feature_dim=24,
        gene_dim=8,
        n_visible=3,
        decoder_dim=16,
        decoder_heads=2,
        alibi_scale_um=50.0,
    )
    base.update(kw)
    return StormNetConfig(**base)


def _model(**kw) -> StormPretrainModel:
    torch.manual_seed(0)
    return StormPretrainModel(_config(**kw))


def _batch(seed: int = 0, *, image: bool = True, expr: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(torch.arange(-1, 2), torch.arange(-1, 2), indexing="ij"), -1).reshape(-1, 2)
    grid = grid[[4, 0, 1, 2, 3, 5, 6, 7, 8]].float() * 100  # centre first, 100 µm pitch
    pos_mask = torch.ones(B, W, dtype=torch.bool)
    pos_mask[1, -3:] = False  # window 1 at a tissue edge
    gene_mask = torch.ones(B, G, dtype=torch.bool)
    gene_mask[2, G // 2 :] = False  # sample 2 measured half the panel
    batch = {
        BatchKeys.OFFSETS: grid.expand(B, W, 2).clone(),
        BatchKeys.POS_MASK: pos_mask,
        BatchKeys.GENE_MASK: gene_mask,
    }
    if image:
        batch[BatchKeys.IMAGE] = torch.randint(0, 256, (B, W, 3, PX, PX), dtype=torch.uint8, generator=g)
    if expr:
        batch[BatchKeys.EXPR] = torch.rand(B, W, G, generator=g) * 3
    return batch


@pytest.mark.parametrize(("image", "expr"), [(True, True), (True, False), (False, True)])
def test_forward_and_embed_with_any_modality(image, expr):
    model = _model()
    batch = _batch(image=image, expr=expr)
    out = model(batch, generator=torch.Generator().manual_seed(0))
    assert set(out) >= {"loss", "loss_expr", "loss_img", "n_masked_expr", "n_masked_img", "teacher_std"}
    assert out["loss"].ndim == 0
    assert torch.isfinite(out["loss"])
    assert out["loss"] > 0
    assert (out["loss_img"] > 0) == image
    assert (out["loss_expr"] > 0) == expr
    out["loss"].backward()
    emb = model.embed(batch)
    assert emb.shape == (B, 32)
    assert torch.isfinite(emb).all()
    assert model.training  # embed restores the mode


def test_embed_can_ignore_a_modality():
    model = _model().eval()
    batch = _batch()
    he_only = model.embed(batch, use_expression=False)
    assert torch.allclose(he_only, model.embed({k: v for k, v in batch.items() if k != BatchKeys.EXPR}))
    assert not torch.allclose(he_only, model.embed(batch))


def test_padded_positions_do_not_influence_the_centre_embedding():
    model = _model().eval()
    batch = _batch()
    ref = model.embed(batch)
    changed = {k: v.clone() for k, v in batch.items()}
    pad = ~batch[BatchKeys.POS_MASK]
    changed[BatchKeys.IMAGE][pad] = torch.randint(0, 256, changed[BatchKeys.IMAGE][pad].shape, dtype=torch.uint8)
    changed[BatchKeys.EXPR][pad] = float("nan")
    changed[BatchKeys.OFFSETS][pad] = float("nan")
    out = model.embed(changed)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, ref, atol=1e-5)


def test_unmeasured_genes_do_not_influence_the_output():
    model = _model().eval()
    batch = _batch()
    ref = model.embed(batch)
    changed = {k: v.clone() for k, v in batch.items()}
    unmeasured = ~batch[BatchKeys.GENE_MASK].unsqueeze(1).expand(B, W, G)
    changed[BatchKeys.EXPR][unmeasured] = float("nan")
    assert torch.allclose(model.embed(changed), ref, atol=1e-5)
    # nor the pretraining loss (targets there are masked out)
    gen = torch.Generator
    assert torch.allclose(
        model(changed, generator=gen().manual_seed(3))["loss"], model(batch, generator=gen().manual_seed(3))["loss"]
    )


def test_ema_teacher_follows_with_momentum_and_gets_no_gradients():
    model = _model(ema_momentum=0.9)
    assert model.teacher is not None
    model.train()
    assert not model.teacher.training
    assert not model.teacher.module.training
    out = model(_batch(), generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert any(p.grad is not None for p in model.image_encoder.parameters())
    t0 = [p.detach().clone() for p in model.teacher.parameters()]
    with torch.no_grad():
        for p in model.image_encoder.parameters():
            p.add_(1.0)
    s = [p.detach().clone() for p in model.image_encoder.parameters()]
    model.update_teacher()
    for t_old, s_new, t_new in zip(t0, s, model.teacher.parameters(), strict=True):
        assert torch.allclose(t_new, 0.9 * t_old + 0.1 * s_new, atol=1e-6)


def test_a_few_steps_lower_the_loss():
    model = _model(dropout=0.0)
    batch = _batch()
    opt = torch.optim.AdamW(model.param_groups(3e-3, weight_decay=0.0))

    def loss() -> float:
        with torch.no_grad():
            return float(model(batch, generator=torch.Generator().manual_seed(0))["loss"])

    before = loss()
    for step in range(12):
        out = model(batch, generator=torch.Generator().manual_seed(step % 3))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        model.update_teacher()
    assert loss() < 0.8 * before


def test_precomputed_features_match_the_patch_path():
    model = _model().eval()
    batch = _batch()
    with torch.no_grad():
        feats = model.image_features(batch[BatchKeys.IMAGE].flatten(0, 1)).view(B, W, -1)
        ref = model.embed(batch)
        cached = model.embed({**batch, BatchKeys.IMAGE: feats})
    assert torch.allclose(ref, cached, atol=1e-5)
    with pytest.raises(ValueError, match="width"):
        model.embed({**batch, BatchKeys.IMAGE: feats[..., :5]})


@pytest.mark.parametrize(
    "kw",
    [
        {"image_encoder": "stain"},
        {"image_encoder": "precomputed", "image_feature_dim": 7},
        {"expression_encoder": "raw"},
        {"image_encoder": "none"},
        {"expression_encoder": "none"},
        {"freeze_image_encoder": True},
        {"window_size": 1, "p_drop_modality": 0.5},
        {"image_loss": "cosine", "use_centre_embedding": False, "expr_normalization": "n_genes"},
    ],
)
def test_configuration_variants_and_ablations(kw):
    model = _model(**kw)
    batch = _batch()
    if kw.get("image_encoder") == "precomputed":
        batch[BatchKeys.IMAGE] = torch.randn(B, W, 7)
    out = model(batch, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    emb = model.embed(batch)
    assert emb.shape == (B, 32)
    assert torch.isfinite(emb).all()
    has_trainable_encoder = kw.get("image_encoder", "conv") == "conv" and not kw.get("freeze_image_encoder")
    assert (model.teacher is not None) == has_trainable_encoder
    if kw.get("window_size") == 1:
        assert model.encode(batch).window == 1


def test_config_validation_and_roundtrip():
    cfg = _config()
    again = StormNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="Unknown StormNetConfig"):
        StormNetConfig.from_dict({**cfg.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="divisible"):
        _config(dim=30, heads=4)
    with pytest.raises(ValueError, match="window_size=1"):
        _config(window_size=1, p_drop_modality=0.0)
    with pytest.raises(ValueError, match="at least one"):
        _config(image_encoder="none", expression_encoder="none")


def test_batch_validation_messages():
    model = _model()
    batch = _batch()
    with pytest.raises(ValueError, match="offsets_um"):
        model({k: v for k, v in batch.items() if k != BatchKeys.OFFSETS})
    with pytest.raises(ValueError, match="gene list"):
        model({**batch, BatchKeys.EXPR: batch[BatchKeys.EXPR][..., :5]})
    with pytest.raises(ValueError, match="none of the model's modalities"):
        model({k: v for k, v in batch.items() if k not in (BatchKeys.EXPR, BatchKeys.IMAGE)})


def test_per_window_modality_flags():
    model = _model().eval()
    batch = _batch()
    has_expr = torch.tensor([True, False, True])
    emb = model.embed({**batch, BatchKeys.HAS_EXPR: has_expr})
    he_only = model.embed(batch, use_expression=False)
    assert torch.allclose(emb[1], he_only[1], atol=1e-5)
    assert not torch.allclose(emb[0], he_only[0])


def test_param_groups_and_inference_export():
    model = _model()
    groups = model.param_groups(1e-4)
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params})
    assert not any(p is q for p in params for q in model.teacher.parameters())
    trainable = [p for n, p in model.named_parameters() if p.requires_grad]
    assert len(params) == len(trainable)
    sd = model.inference_state_dict()
    assert not any(k.startswith(("teacher.", "decoders.")) for k in sd)
    fresh = StormPretrainModel(_config())
    fresh.load_inference_state_dict(sd)
    batch = _batch()
    assert torch.allclose(fresh.eval().embed(batch), model.eval().embed(batch), atol=1e-6)
    for t, s in zip(fresh.teacher.parameters(), fresh.image_encoder.parameters(), strict=True):
        assert torch.equal(t, s)
    with pytest.raises(ValueError, match="do not fit"):
        StormPretrainModel(_config(dim=16)).load_inference_state_dict(sd)
    counts = model.parameter_counts()
    assert counts["total"] == sum(p.numel() for p in model.parameters()) > counts["inference"]


def test_default_config_is_small():
    model = StormPretrainModel(StormNetConfig(n_genes=2000))
    counts = model.parameter_counts()
    assert counts["total"] * 4 < 25e6  # fp32 safetensors, EMA teacher and decoders included
    assert 1e6 < counts["image_encoder"] < 3e6


class _PlainExpressionEncoder(torch.nn.Module):
    """An expression encoder with only ``forward`` (no ``encode_spots``/``contextualize``): the fallback path."""

    def __init__(self, n_genes: int, dim: int) -> None:
        super().__init__()
        self.out_dim = dim
        self.proj = torch.nn.Linear(n_genes, dim)

    def forward(self, expr, gene_mask, offsets_um, pos_mask):
        return self.proj(expr * gene_mask) + offsets_um.sum(-1, keepdim=True) / 100


@pytest.mark.parametrize(
    ("kw", "image", "expr"),
    [
        ({}, True, True),
        ({}, False, True),
        ({}, True, False),
        ({"expression_encoder": "raw"}, True, True),
        ({"depth": 1}, False, True),
        ({"image_encoder": "none"}, False, True),
        ({"plain": True}, False, True),
    ],
)
def test_embed_windows_of_spot_features_equals_embed_of_raw_windows(kw, image, expr):
    """The inference path (spots encoded once, gathered into windows) equals the network on whole windows."""
    kw = dict(kw)
    if kw.pop("plain", False):
        torch.manual_seed(0)
        model = StormPretrainModel(_config(), expression_encoder=_PlainExpressionEncoder(G, 32))
    else:
        model = _model(**kw)
    g = torch.Generator().manual_seed(3)
    n, b = 30, 7
    spot_expr = torch.rand(n, G, generator=g) * 3
    spot_img = torch.randint(0, 256, (n, 3, PX, PX), dtype=torch.uint8, generator=g)
    gene_mask = torch.ones(G, dtype=torch.bool)
    gene_mask[::3] = False
    index = torch.randint(0, n, (b, W), generator=g)
    index[:, 0] = torch.arange(b)
    index[2, 5:] = -1  # padding at an edge
    index[4, 1:] = -1  # an isolated spot
    offsets = torch.randn(b, W, 2, generator=g) * 80
    offsets[:, 0] = 0
    offsets[index < 0] = 0
    rows = index.clamp_min(0)
    batch = {
        BatchKeys.OFFSETS: offsets,
        BatchKeys.POS_MASK: index >= 0,
        BatchKeys.GENE_MASK: gene_mask.expand(b, G),
    }
    if image:
        batch[BatchKeys.IMAGE] = spot_img[rows]
    if expr:
        batch[BatchKeys.EXPR] = spot_expr[rows]
    with torch.inference_mode():
        ref = model.embed(batch)
        spots = model.spot_features(
            image=spot_img if image else None, expr=spot_expr if expr else None, gene_mask=gene_mask
        )
        fast = model.embed_windows(spots, index, offsets)
        full = model.encode(batch)  # every token: the niche is their mean over the valid ones
        centre, niche = model.embed_windows(spots, index, offsets, niche=True)
    assert fast.shape == ref.shape == (b, 32)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(centre, ref, rtol=1e-4, atol=1e-5)
    weights = full.token_valid.float().unsqueeze(-1)
    torch.testing.assert_close(niche, (full.tokens * weights).sum(1) / weights.sum(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(niche[4], ref[4], rtol=1e-4, atol=1e-5)  # an isolated spot is its own niche
    assert model.training  # restored


def test_spot_features_validation():
    model = _model()
    with pytest.raises(ValueError, match=r"expr must be \(N, 20\)"):
        model.spot_features(expr=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="image must be"):
        model.spot_features(image=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="No input"):
        model.spot_features()
    spots = model.spot_features(expr=torch.zeros(3, G))
    with pytest.raises(ValueError, match=r"index must be \(B, W\)"):
        model.embed_windows(spots, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, 2))
