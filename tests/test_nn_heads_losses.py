import sys
import types

import pytest
import torch
from torch import nn

from storm.nn import (
    EMATeacher,
    ExpressionHead,
    NovaeExpressionEncoder,
    TokenDecoder,
    l1_l2_loss,
    masked_expression_loss,
    token_regression_loss,
)


def test_expression_head_and_l1_l2_loss():
    head = ExpressionHead(16, 50, hidden_dim=32, n_layers=2)
    assert head(torch.randn(4, 16)).shape == (4, 50)
    assert ExpressionHead(16, 7, n_layers=0)(torch.randn(2, 3, 16)).shape == (2, 3, 7)
    pred, target = torch.zeros(2, 3), torch.full((2, 3), 2.0)
    assert l1_l2_loss(pred, target, l1=1.0, l2=0.5) == pytest.approx(2.0 + 0.5 * 4.0)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    target[0, 1:] = float("nan")  # entries outside the mask may be NaN
    assert l1_l2_loss(pred, target, mask=mask) == pytest.approx(6.0)
    empty = l1_l2_loss(pred.requires_grad_(), target, mask=torch.zeros(2, 3, dtype=torch.bool))
    assert empty == 0
    empty.backward()
    with pytest.raises(ValueError, match="shape"):
        l1_l2_loss(pred, target[:, :2])


def test_masked_expression_loss_counts_measured_genes_at_target_positions_only():
    pred = torch.zeros(1, 2, 4)
    target = torch.tensor([[[1.0, 1.0, float("nan"), float("nan")], [9.0, 9.0, 9.0, 9.0]]])
    genes = torch.tensor([[[True, True, False, False], [True, True, True, True]]])
    positions = torch.tensor([[True, False]])
    assert masked_expression_loss(pred, target, genes, positions) == pytest.approx(1.0)
    # each position is averaged over its own measured genes before positions are averaged
    positions = torch.tensor([[True, True]])
    assert masked_expression_loss(pred, target, genes, positions) == pytest.approx((1.0 + 81.0) / 2)
    none = masked_expression_loss(pred.requires_grad_(), target, genes, torch.zeros(1, 2, dtype=torch.bool))
    assert none == 0
    none.backward()


@pytest.mark.parametrize("kind", ["smooth_l1", "cosine"])
def test_token_regression_loss(kind):
    target = torch.randn(5, 8)
    perfect = torch.nn.functional.layer_norm(target, (8,))
    assert token_regression_loss(perfect, target * 3 + 1, kind) == pytest.approx(0.0, abs=1e-5)
    assert token_regression_loss(-perfect, target, kind) > 0.5
    assert token_regression_loss(torch.zeros(0, 8), torch.zeros(0, 8), kind) == 0
    with pytest.raises(ValueError, match="Unknown image loss"):
        token_regression_loss(perfect, target, "l3")


def test_token_decoder_reconstructs_its_own_segment_without_seeing_targets():
    torch.manual_seed(0)
    b, w = 2, 5
    dec = TokenDecoder(12, 16, 7, n_segments=2, target_segment=1, heads=2).eval()
    tokens = torch.randn(b, 2 * w, 12)
    visible = torch.ones(b, 2 * w, dtype=torch.bool)
    visible[:, w + 1 :] = False  # expression positions 1.. hidden
    targets = torch.zeros(b, w, dtype=torch.bool)
    targets[:, 1:] = True
    pos = torch.randn(b, 2 * w, 2) * 50
    out = dec(tokens, visible, targets, pos)
    assert out.shape == (b, w, 7)
    changed = tokens.clone()
    changed[:, w + 1 :] = 100.0  # the hidden tokens' encoder outputs never reach the decoder
    assert torch.allclose(dec(changed, visible, targets, pos), out, atol=1e-5)
    with pytest.raises(ValueError, match="target_segment"):
        TokenDecoder(12, 16, 7, n_segments=2, target_segment=2)


def test_ema_teacher_standalone():
    student = nn.Linear(3, 2)
    teacher = EMATeacher(student, momentum=0.5)
    teacher.train()
    assert not teacher.training
    assert teacher(torch.randn(1, 3)).requires_grad is False
    with torch.no_grad():
        student.weight.add_(2.0)
    old = teacher.module.weight.clone()
    teacher.update(student)
    assert torch.allclose(teacher.module.weight, 0.5 * old + 0.5 * student.weight)
    teacher.update(student, momentum=0.0)
    assert torch.equal(teacher.module.weight, student.weight)
    with pytest.raises(ValueError, match="momentum"):
        EMATeacher(student, momentum=1.5)


def test_novae_encoder_takes_gene_embeddings_from_novae(monkeypatch):
    torch.manual_seed(0)
    embedder = types.SimpleNamespace(
        gene_to_index={"cd3e": 0, "ms4a1": 1, "epcam": 2},
        embedding=nn.Embedding(3, 4),
        linear=nn.Linear(4, 4),
    )
    novae = types.ModuleType("novae")
    novae.Novae = types.SimpleNamespace(from_pretrained=lambda name: types.SimpleNamespace(cell_embedder=embedder))
    monkeypatch.setitem(sys.modules, "novae", novae)
    enc = NovaeExpressionEncoder(["EPCAM", "UNKNOWN1", "CD3E"], 8, heads=2)
    assert enc.gene_dim == 4
    assert enc.n_genes_in_novae == 2
    assert not enc.gene_embedding.requires_grad
    expected = embedder.linear(embedder.embedding.weight).detach()
    assert torch.allclose(enc.gene_embedding[0], expected[2])
    assert torch.equal(enc.gene_embedding[1], torch.zeros(4))  # unknown to Novae: contributes nothing
    out = enc(torch.rand(2, 3, 3), None, torch.zeros(2, 3, 2), torch.ones(2, 3, dtype=torch.bool))
    assert out.shape == (2, 3, 8)
    with pytest.raises(ValueError, match="vocabulary"):
        NovaeExpressionEncoder(["FOO"], 8)
