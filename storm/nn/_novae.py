"""Optional: an :class:`ExpressionEncoder` whose gene embeddings come from a pretrained Novae model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ._expression_encoder import ExpressionEncoder

__all__ = ["NovaeExpressionEncoder"]

_NOVAE_HINT = (
    "NovaeExpressionEncoder needs the optional package `novae` (Blampey et al. 2025): `pip install novae`. "
    "storm's own ExpressionEncoder (the default) needs nothing extra."
)


def _import_novae() -> Any:
    try:
        import novae
    except ImportError as err:
        raise ImportError(_NOVAE_HINT) from err
    return novae


class NovaeExpressionEncoder(ExpressionEncoder):
    """:class:`ExpressionEncoder` with the (frozen) gene embeddings of a pretrained Novae model.

    The paper uses Novae, frozen, as its expression encoder. Novae's graph encoder runs on whole-slide PyTorch
    Geometric graphs built from AnnData, which the tensor-only :mod:`storm.nn` does not see; this wrapper takes
    the part that makes Novae panel-agnostic, its gene embeddings (``cell_embedder.embedding`` followed by its
    linear layer), and uses them in storm's pooling + neighbourhood attention. Genes of ``gene_names`` unknown to
    Novae get a zero embedding and therefore contribute nothing. Note that Novae normalises the embedding matrix
    per dimension over the panel's genes, storm per gene.

    Parameters
    ----------
    gene_names
        The model's union gene list, in order.
    dim
        Output width.
    model_name
        Novae checkpoint on the Hugging Face Hub (or a local folder), passed to ``novae.Novae.from_pretrained``.
    freeze
        Keep the gene embeddings fixed (the MLP and context layers still train).
    **kwargs
        Passed to :class:`ExpressionEncoder` (``gene_dim`` is taken from the Novae model).
    """

    def __init__(
        self,
        gene_names: Sequence[str],
        dim: int,
        *,
        model_name: str = "MICS-Lab/novae-human-0",
        freeze: bool = True,
        **kwargs: Any,
    ) -> None:
        novae = _import_novae()
        try:
            model = novae.Novae.from_pretrained(model_name)
        except Exception as err:
            raise OSError(
                f"Could not load the Novae model {model_name!r} ({type(err).__name__}: {err}). Offline, download it "
                "once where the Hugging Face Hub is reachable and set HF_HUB_OFFLINE=1, or pass a local folder."
            ) from err
        try:
            embedder = model.cell_embedder
            gene_to_index = embedder.gene_to_index
            with torch.no_grad():
                table = embedder.linear(embedder.embedding.weight).float()
        except AttributeError as err:  # pragma: no cover - depends on novae's internals
            raise RuntimeError(
                f"This version of novae ({getattr(novae, '__version__', '?')}) has no `cell_embedder` with "
                "`gene_to_index`, `embedding` and `linear`; NovaeExpressionEncoder was written for novae ≥ 0.2."
            ) from err
        kwargs.pop("gene_dim", None)
        super().__init__(len(gene_names), dim, gene_dim=table.shape[1], **kwargs)
        weights = torch.zeros(len(gene_names), table.shape[1])
        found = [(i, gene_to_index[g.lower()]) for i, g in enumerate(gene_names) if g.lower() in gene_to_index]
        if not found:
            raise ValueError(f"None of the {len(gene_names)} genes is in the vocabulary of Novae {model_name!r}.")
        rows, idx = zip(*found, strict=True)
        weights[list(rows)] = table[list(idx)]
        self.gene_embedding.data.copy_(weights)
        self.gene_embedding.requires_grad_(not freeze)
        self.novae_model_name = model_name
        self.n_genes_in_novae = len(found)
