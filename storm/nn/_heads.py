"""Downstream heads: the H&E → expression MLP ("virtual ST") and its L1 + L2 loss."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from storm._files import file_sha256, read_saved_folder, write_manifest

__all__ = ["ExpressionHead", "SavedHead", "fit_expression_head", "l1_l2_loss", "predict_with_head"]

HEAD_WEIGHTS_FILE = "head.safetensors"
HEAD_CONFIG_FILE = "head.json"
HEAD_FORMAT = "storm-expression-head"
#: 2: ``arch['kind']`` names the head's class (1: only :class:`ExpressionHead` existed).
HEAD_FORMAT_VERSION = 2
_HEAD_KEYS = frozenset(
    {
        "format",
        "format_version",
        "storm_version",
        "arch",
        "genes",
        "encoder",
        "features",
        "setup",
        "val_pearson",
        "training",
        "weights",
    }
)


class SavedHead(nn.Module):
    """What every trained expression head carries, and its checked save/load (the base of both head kinds).

    Attributes set by :func:`storm.tl.train_expression_head`, saved by :meth:`save` and checked by :meth:`load`:
    ``genes`` (its outputs, in order), ``encoder`` (the identity of the model it was trained with: name and
    fingerprint), ``features`` (what it reads), ``setup`` (patch sizes, context pitch, stain target, …),
    ``val_pearson`` (each gene's Pearson r on the validation slides) and ``training_info`` (provenance). ``arch``
    holds the constructor arguments, with ``kind`` naming the class.
    """

    kind: str = ""
    arch: dict[str, Any]
    #: Every head class by its ``kind``, filled as subclasses are defined, so :meth:`load` needs no import of them.
    kinds: ClassVar[dict[str, type[SavedHead]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            SavedHead.kinds[cls.kind] = cls

    def _init_record(self) -> None:
        self.genes: list[str] | None = None
        self.encoder: dict[str, Any] = {}
        self.features: list[dict[str, Any]] = []
        self.setup: dict[str, Any] = {}
        self.val_pearson: list[float] | None = None
        self.training_info: dict[str, Any] = {}

    @property
    def n_genes(self) -> int:
        """Number of predicted genes."""
        return int(self.arch["n_genes"])

    @classmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> SavedHead:
        """Build a fresh head of the architecture ``arch`` (what :meth:`save` records)."""
        raise NotImplementedError  # pragma: no cover - each kind defines it

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Save the weights (``head.safetensors``) and ``head.json`` into folder ``path``.

        ``head.json`` holds the architecture, the gene list, the encoder identity, the feature blocks, the setup,
        each gene's validation Pearson r, the provenance and the sha256 of the weights (checked by :meth:`load`). The
        folder is self-contained: every weight the head computes with is in it.

        Parameters
        ----------
        path
            Output folder (created).
        overwrite
            Replace a head saved there before.

        Returns
        -------
        Path
            The folder.
        """
        from safetensors.torch import save_file

        from storm._version import __version__

        if self.genes is None or len(self.genes) != self.n_genes:
            raise ValueError("Only a head with its gene list (`head.genes`, one per output) can be saved.")
        folder = Path(path)
        if (folder / HEAD_CONFIG_FILE).exists() and not overwrite:
            raise FileExistsError(f"{folder} already holds a saved head; pass overwrite=True to replace it.")
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.state_dict().items()}
        weights = folder / HEAD_WEIGHTS_FILE
        save_file(tensors, str(weights), metadata={"format": "pt", "storm_version": __version__})
        val = None if self.val_pearson is None else [None if not math.isfinite(v) else v for v in self.val_pearson]
        body = {
            "format": HEAD_FORMAT,
            "format_version": HEAD_FORMAT_VERSION,
            "storm_version": __version__,
            "arch": {"kind": self.kind, **self.arch},
            "genes": list(self.genes),
            "encoder": self.encoder,
            "features": self.features,
            "setup": self.setup,
            "val_pearson": val,
            "training": self.training_info,
            "weights": {"file": HEAD_WEIGHTS_FILE, "sha256": file_sha256(weights)},
        }
        (folder / HEAD_CONFIG_FILE).write_text(json.dumps(body, indent=1) + "\n")
        write_manifest(folder, (HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE))
        return folder

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        encoder: Mapping[str, Any] | str | None = None,
        genes: Sequence[str] | None = None,
    ) -> SavedHead:
        """Load a head saved by :meth:`save`, after validating it.

        Parameters
        ----------
        path
            Folder holding ``head.json`` and ``head.safetensors``.
        encoder
            The identity of the model whose features the head will read: a fingerprint string or a dict with
            ``"fingerprint"`` (see :func:`storm.tl.encoder_identity`). A head trained on another encoder is refused.
        genes
            The gene list the caller expects, in order; a head of another gene list is refused.

        Returns
        -------
        ExpressionHead or SpatialExpressionHead
            The kind of head saved there (``arch['kind']``; folders written before there were kinds hold an
            :class:`ExpressionHead`).

        Raises
        ------
        FileNotFoundError
            Missing files.
        ValueError
            Not a head file, unknown keys, tampered weights (sha256), or a head of another encoder or gene list.
        """
        from safetensors.torch import load_file

        body, cfg_path, w_path = read_saved_folder(
            path,
            HEAD_CONFIG_FILE,
            HEAD_WEIGHTS_FILE,
            fmt=HEAD_FORMAT,
            format_version=HEAD_FORMAT_VERSION,
            known_keys=_HEAD_KEYS,
            what="storm expression head",
            saved_by="ExpressionHead.save",
        )
        folder = cfg_path.parent
        saved_genes = [str(g) for g in body["genes"]]
        if genes is not None and [str(g) for g in genes] != saved_genes:
            ours = [str(g) for g in genes]
            diff = sorted(set(ours) ^ set(saved_genes))[:5]
            raise ValueError(
                f"The head at {folder} predicts {len(saved_genes):,} genes, not the {len(ours):,} expected "
                f"({'same genes in another order' if not diff else f'e.g. {diff} differ'}). Train a head for this gene "
                "list with storm.tl.train_expression_head."
            )
        saved_encoder = body.get("encoder") or {}
        if encoder is not None:
            want = encoder if isinstance(encoder, str) else str(dict(encoder).get("fingerprint"))
            if want != saved_encoder.get("fingerprint"):
                raise ValueError(
                    f"The head at {folder} was trained on features of encoder {saved_encoder.get('name')!r} "
                    f"(fingerprint {str(saved_encoder.get('fingerprint'))[:12]}…), not of the given one "
                    f"({want[:12]}…). Its predictions would be meaningless: use the model it was trained with, or "
                    "train a new head with storm.tl.train_expression_head(model=...)."
                )
        arch = dict(body["arch"])
        kind = arch.pop("kind", ExpressionHead.kind)
        kinds = SavedHead.kinds
        if kind not in kinds:
            raise ValueError(
                f"{cfg_path}: unknown head kind {kind!r} (this storm knows {sorted(kinds)}); upgrade storm."
            )
        head = kinds[kind].from_arch(arch)
        if len(saved_genes) != head.n_genes:
            raise ValueError(f"{cfg_path}: {len(saved_genes)} genes for a head of {head.n_genes} outputs.")
        state = load_file(str(w_path))
        try:
            head.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{w_path} does not fit the architecture in {HEAD_CONFIG_FILE}: {err}") from err
        head.genes = saved_genes
        head.encoder = dict(saved_encoder)
        head.features = list(body.get("features") or [])
        head.setup = dict(body.get("setup") or {})
        val = body.get("val_pearson")
        head.val_pearson = None if val is None else [float("nan") if v is None else float(v) for v in val]
        head.training_info = dict(body.get("training") or {})
        head.eval()
        return head


class ExpressionHead(SavedHead):
    """MLP from frozen embeddings to gene expression (the paper's virtual-ST head; storm's "frozen" head).

    Inputs are standardised with the buffers ``feature_mean`` and ``feature_scale`` (set them from the training
    features; identity by default), so the head can take features of very different ranges side by side (e.g. a
    STORM embedding next to stain statistics). What a trained head carries and how it is saved: :class:`SavedHead`.

    Parameters
    ----------
    in_dim
        Embedding width (``StormNetConfig.dim``).
    n_genes
        Number of predicted genes (e.g. 500 HVGs).
    hidden_dim
        Hidden width.
    n_layers
        Number of hidden layers (0: a linear head).
    dropout
        Dropout after each hidden layer.
    """

    kind = "mlp"

    def __init__(
        self, in_dim: int, n_genes: int, *, hidden_dim: int = 256, n_layers: int = 1, dropout: float = 0.1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(), nn.Dropout(dropout)]
            width = hidden_dim
        layers.append(nn.Linear(width, n_genes))
        self.net = nn.Sequential(*layers)
        self.arch = {
            "in_dim": int(in_dim),
            "n_genes": int(n_genes),
            "hidden_dim": int(hidden_dim),
            "n_layers": int(n_layers),
            "dropout": float(dropout),
        }
        self.register_buffer("feature_mean", torch.zeros(in_dim))
        self.register_buffer("feature_scale", torch.ones(in_dim))
        self._init_record()

    @classmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> ExpressionHead:
        """Build a fresh head of the architecture ``arch``."""
        return cls(
            int(arch["in_dim"]),
            int(arch["n_genes"]),
            hidden_dim=int(arch["hidden_dim"]),
            n_layers=int(arch["n_layers"]),
            dropout=float(arch["dropout"]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(..., in_dim)`` embeddings to ``(..., n_genes)`` predicted normalised expression."""
        return self.net((x - self.feature_mean) / self.feature_scale)

    def set_standardization(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Standardise inputs as ``(x - mean) / scale`` (``scale`` is floored at 1e-6 of its largest entry)."""
        scale = torch.as_tensor(scale, dtype=torch.float32).clone()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale)).clamp_min(1e-6 * float(scale.max()))
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feature_scale.copy_(scale)

    def __repr__(self) -> str:
        a = self.arch
        genes = "?" if self.genes is None else f"{len(self.genes):,}"
        name = self.encoder.get("name", "?")
        return (
            f"ExpressionHead(in_dim={a['in_dim']}, genes={genes}, hidden={a['hidden_dim']}×{a['n_layers']}, "
            f"encoder={name!r}, features={[f.get('name') for f in self.features]})"
        )


def l1_l2_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    l1: float = 1.0,
    l2: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``l1 · mean|pred - target| + l2 · mean (pred - target)²``, optionally over ``mask`` only.

    Parameters
    ----------
    pred, target
        Same shape.
    l1, l2
        Weights λ1 and λ2 of the paper's virtual-ST loss.
    mask
        Bool broadcastable to ``pred``: entries that count (e.g. measured genes). ``None``: all.

    Returns
    -------
    torch.Tensor
        Scalar loss (0, still attached to ``pred``, when the mask selects nothing).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape.")
    diff = pred - torch.nan_to_num(target)
    if mask is None:
        return l1 * diff.abs().mean() + l2 * diff.pow(2).mean()
    m = mask.bool().expand_as(diff)
    diff = torch.where(m, diff, torch.zeros((), dtype=diff.dtype, device=diff.device))
    n = m.sum().clamp_min(1)
    return (l1 * diff.abs().sum() + l2 * diff.pow(2).sum()) / n


def fit_expression_head(
    head: ExpressionHead,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    epochs: int = 10,
    lr: float = 5e-4,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
    l1: float = 1.0,
    l2: float = 1.0,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[dict[str, float]]:
    """Train ``head`` on features ``x`` → targets ``y`` with AdamW and ``l1 · L1 + l2 · L2`` (arrays only, no AnnData).

    The input standardisation is set from ``x`` and the last layer's bias from the (masked) mean of ``y`` first, so
    the head starts at the training mean and learns deviations from it.

    Parameters
    ----------
    head
        The head (modified in place).
    x, y
        ``(n, in_dim)`` features and ``(n, n_genes)`` targets (float32).
    mask
        Bool ``(n, n_genes)``: measured entries (others do not count in the loss); ``None``: all.
    epochs, lr, weight_decay, batch_size
        Optimisation (the paper: 10 epochs, AdamW, lr 5e-4).
    l1, l2
        Loss weights.
    x_val, y_val
        Validation features and targets: the loss and the mean gene-wise Pearson r are logged per epoch.
    generator
        Shuffling seed.
    device
        Where to train.
    progress
        Show a progress bar over epochs.

    Returns
    -------
    list of dict
        Per epoch: ``epoch``, ``train_loss`` and, with validation data, ``val_loss`` and ``val_mean_r``.
    """
    from tqdm.auto import tqdm

    n = x.shape[0]
    if n < 2:
        raise ValueError(f"Training an expression head needs at least 2 spots, got {n}.")
    m = torch.ones_like(y, dtype=torch.bool) if mask is None else mask.bool()
    std, mean = torch.std_mean(x, dim=0)
    head.set_standardization(mean, std)
    with torch.no_grad():
        counts = m.sum(0).clamp_min(1)
        y_mean = torch.where(m, torch.nan_to_num(y), 0).sum(0) / counts
        last = head.net[-1]
        last.bias.copy_(y_mean)
        last.weight.mul_(0.1)
    head.to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    for epoch in tqdm(range(epochs), desc="expression head", unit="epoch", disable=not progress):
        head.train()
        order = torch.randperm(n, generator=generator)
        total, seen = 0.0, 0
        for b0 in range(0, n, batch_size):
            idx = order[b0 : b0 + batch_size]
            xb, yb, mb = x[idx].to(device), y[idx].to(device), m[idx].to(device)
            loss = l1_l2_loss(head(xb), yb, l1=l1, l2=l2, mask=mb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        row = {"epoch": epoch + 1, "train_loss": total / seen}
        if x_val is not None and y_val is not None and len(x_val) > 1:
            pred = predict_with_head(head, x_val, device=device)
            row["val_loss"] = float(l1_l2_loss(pred, y_val, l1=l1, l2=l2))
            r = _pearson_columns(pred, y_val)
            row["val_mean_r"] = float(r[torch.isfinite(r)].mean()) if torch.isfinite(r).any() else float("nan")
        history.append(row)
    head.eval()
    return history


def predict_with_head(
    head: ExpressionHead, x: torch.Tensor, *, batch_size: int = 4096, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Predict with ``head`` in eval mode, in batches; its training mode is restored afterwards.

    Parameters
    ----------
    head
        A trained head.
    x
        Features ``(n, in_dim)``.
    batch_size
        Rows per forward pass.
    device
        Where the head runs.

    Returns
    -------
    torch.Tensor
        Predictions ``(n, n_genes)``, on the CPU.
    """
    was = head.training
    head.eval()
    head.to(device)
    with torch.inference_mode():
        out = torch.cat([head(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])
    head.train(was)
    return out


def _pearson_columns(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Column-wise Pearson r (NaN where a column is constant), in float64."""
    p = pred.double() - pred.double().mean(0)
    t = true.double() - true.double().mean(0)
    den = (p.pow(2).sum(0) * t.pow(2).sum(0)).sqrt()
    return torch.where(den > 0, (p * t).sum(0) / den, torch.full_like(den, float("nan")))
