import pytest
import torch

from storm.nn import ExpressionEncoder, RawExpressionEncoder, broadcast_gene_mask

B, W, G, DIM = 3, 6, 20, 16


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    expr = torch.rand(B, W, G, generator=g) * 3
    gene_mask = torch.ones(B, G, dtype=torch.bool)
    gene_mask[0, 10:] = False  # sample 0 has a 10-gene panel
    gene_mask[1, ::2] = False
    offsets = torch.randn(B, W, 2, generator=g) * 100
    pos_mask = torch.ones(B, W, dtype=torch.bool)
    pos_mask[:, -2:] = False
    return expr, gene_mask, offsets, pos_mask


@pytest.mark.parametrize("normalization", ["total", "n_genes"])
def test_shapes_and_unmeasured_genes_have_no_influence(normalization):
    torch.manual_seed(0)
    enc = ExpressionEncoder(G, DIM, gene_dim=8, heads=2, normalization=normalization).eval()
    expr, gene_mask, offsets, pos_mask = _inputs()
    out = enc(expr, gene_mask, offsets, pos_mask)
    assert out.shape == (B, W, DIM)
    assert torch.isfinite(out).all()
    changed = expr.clone()
    changed[~gene_mask.unsqueeze(1).expand_as(expr)] = float("nan")  # unmeasured genes: any value, even NaN
    out2 = enc(changed, gene_mask, offsets, pos_mask)
    assert torch.allclose(out, out2, atol=1e-6)
    changed[:, :, :][~gene_mask.unsqueeze(1).expand_as(expr)] = 1e6
    assert torch.allclose(out, enc(changed, gene_mask, offsets, pos_mask), atol=1e-6)
    # a measured gene does matter
    changed = expr.clone()
    changed[0, 0, 0] += 5
    assert not torch.allclose(enc(changed, gene_mask, offsets, pos_mask)[0, 0], out[0, 0])


def test_context_respects_pos_mask():
    torch.manual_seed(0)
    enc = ExpressionEncoder(G, DIM, gene_dim=8, heads=2).eval()
    expr, gene_mask, offsets, pos_mask = _inputs()
    out = enc(expr, gene_mask, offsets, pos_mask)
    changed, off2 = expr.clone(), offsets.clone()
    changed[:, -2:] = float("nan")
    off2[:, -2:] = float("nan")
    out2 = enc(changed, gene_mask, off2, pos_mask)
    assert torch.allclose(out[:, :-2], out2[:, :-2], atol=1e-6)
    # with context, a valid neighbour does influence a spot; without context it does not
    changed = expr.clone()
    changed[:, 1] += 2
    assert not torch.allclose(enc(changed, gene_mask, offsets, pos_mask)[:, 0], out[:, 0])
    no_ctx = ExpressionEncoder(G, DIM, gene_dim=8, n_context_layers=0).eval()
    assert torch.allclose(
        no_ctx(changed, gene_mask, offsets, pos_mask)[:, 0], no_ctx(expr, gene_mask, offsets, pos_mask)[:, 0]
    )


def test_gene_embeddings_are_unit_norm_and_pca_init():
    enc = ExpressionEncoder(G, DIM, gene_dim=4)
    assert torch.allclose(enc.normalized_gene_embedding().norm(dim=1), torch.ones(G))
    loadings = torch.randn(G, 3)
    loadings[5] = 0  # a gene absent from the PCA data keeps its random direction
    before = enc.gene_embedding.detach().clone()
    enc.init_from_pca(loadings)
    e = enc.gene_embedding.detach()
    assert torch.equal(e[0, :3], loadings[0])
    assert torch.equal(e[5], before[5])
    cos = torch.nn.functional.cosine_similarity(enc.normalized_gene_embedding()[:, :3], loadings, dim=1)
    assert torch.all(cos[torch.arange(G) != 5] > 0.99)
    with pytest.raises(ValueError, match="loadings"):
        enc.init_from_pca(torch.randn(G + 1, 3))
    with pytest.raises(ValueError, match="normalization"):
        ExpressionEncoder(G, DIM, normalization="sum")


def test_total_normalization_is_depth_invariant():
    enc = ExpressionEncoder(G, DIM, gene_dim=8, n_context_layers=0).eval()
    x = torch.rand(2, G)
    assert torch.allclose(enc.encode_spots(x), enc.encode_spots(3 * x), atol=1e-5)


def test_raw_expression_encoder_and_mask_broadcast():
    expr, gene_mask, offsets, pos_mask = _inputs()
    raw = RawExpressionEncoder(G, DIM)
    out = raw(expr, gene_mask, offsets, pos_mask)
    assert out.shape == (B, W, DIM)
    assert raw.out_dim == DIM
    changed = expr.clone()
    changed[~gene_mask.unsqueeze(1).expand_as(expr)] = float("nan")
    assert torch.allclose(out, raw(changed, gene_mask, offsets, pos_mask))
    assert broadcast_gene_mask(None, expr).all()
    assert broadcast_gene_mask(gene_mask, expr).shape == (B, W, G)
    with pytest.raises(ValueError, match="genes"):
        broadcast_gene_mask(gene_mask[:, :5], expr)
