"""Configuration of a :class:`~storm.models.StormModel`: the network, its gene list and how data are prepared."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from storm._dataclasses import unknown_keys
from storm._version import __version__
from storm.nn import StormNetConfig

__all__ = ["StormModelConfig", "window_positions"]

WINDOW_METHODS = ("auto", "grid", "knn")
IMAGE_CHOICES = ("auto", "fullres", "hires", "lowres")


def window_positions(window: int, k: int) -> int:
    """Positions per window that :func:`storm.pp.spatial_windows` gives for grid side ``window`` and ``k``.

    The grid gives ``window²`` positions, knn ``k + 1``; a mix of platforms the larger; ``window=1`` the centre only.
    """
    return 1 if window == 1 else max(window * window, k + 1)


@dataclass
class StormModelConfig:
    """Everything needed to rebuild a :class:`~storm.models.StormModel` and to prepare data for it.

    Attributes
    ----------
    net
        Network hyper-parameters (``net.n_genes`` = ``len(genes)``).
    genes
        The model's gene list (union panel), in the order of the expression input.
    size_um
        Side of the H&E patch of a spot in µm (the paper: 55 µm, one Visium spot); patches are resized to
        ``net.patch_px`` pixels.
    window
        Side of the spatial window on grid platforms (5: the paper's 5×5; 1: no spatial context).
    window_method
        ``"auto"``, ``"grid"`` or ``"knn"`` (see :func:`storm.pp.spatial_windows`).
    k
        Neighbours per window on non-grid platforms.
    target_sum
        Counts per spot before ``log1p`` (library-size normalisation of :func:`storm.pp.normalize`).
    image
        Which slide image patches are cut from: ``"auto"`` (full resolution where recorded, else hires, else
        lowres), ``"fullres"``, ``"hires"`` or ``"lowres"``.
    version
        storm version that wrote the configuration.
    """

    net: StormNetConfig
    genes: list[str]
    size_um: float = 55.0
    window: int = 5
    window_method: str = "auto"
    k: int = 24
    target_sum: float = 1e4
    image: str = "auto"
    version: str = field(default=__version__)

    def __post_init__(self) -> None:
        if isinstance(self.net, dict):
            self.net = StormNetConfig.from_dict(self.net)
        self.genes = [str(g) for g in self.genes]
        problems = []
        if len(set(self.genes)) != len(self.genes):
            problems.append("the gene list repeats names")
        if self.net.expression_encoder != "none" and len(self.genes) != self.net.n_genes:
            problems.append(f"{len(self.genes)} genes but net.n_genes = {self.net.n_genes}")
        if not self.size_um > 0:
            problems.append(f"size_um must be > 0, got {self.size_um}")
        if self.window < 1 or self.window % 2 == 0:
            problems.append(f"window must be an odd number ≥ 1, got {self.window}")
        if self.k < 1:
            problems.append(f"k must be ≥ 1, got {self.k}")
        if self.window_method not in WINDOW_METHODS:
            problems.append(f"window_method must be one of {WINDOW_METHODS}, got {self.window_method!r}")
        if self.image not in IMAGE_CHOICES:
            problems.append(f"image must be one of {IMAGE_CHOICES}, got {self.image!r}")
        if not self.target_sum > 0:
            problems.append(f"target_sum must be > 0, got {self.target_sum}")
        if (self.window == 1) != (self.net.window_size == 1):
            problems.append(
                f"window={self.window} but net.window_size={self.net.window_size}: the no-context ablation needs both "
                "to be 1"
            )
        if problems:
            raise ValueError("Invalid StormModelConfig: " + "; ".join(problems) + ".")

    @property
    def patch_px(self) -> int:
        """Side of the patches in pixels (``net.patch_px``)."""
        return int(self.net.patch_px)

    def setup_args(self) -> dict[str, Any]:
        """Return the data-preparation arguments (everything but the network and the gene list)."""
        return {
            "size_um": float(self.size_um),
            "window": int(self.window),
            "window_method": self.window_method,
            "k": int(self.k),
            "target_sum": float(self.target_sum),
            "image": self.image,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (the ``config.json`` of a saved model, without the weights' checksum)."""
        return {
            "version": self.version,
            "net": self.net.to_dict(),
            "genes": list(self.genes),
            "setup": self.setup_args(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StormModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a file of another storm version)."""
        setup = dict(d.get("setup") or {})
        unknown = unknown_keys(cls, setup, exclude=frozenset({"net", "genes", "version"}))
        if unknown:
            raise ValueError(f"Unknown setup arguments {unknown} in the model configuration.")
        for key in ("net", "genes"):
            if key not in d:
                raise ValueError(f"The model configuration has no {key!r}.")
        return cls(
            net=StormNetConfig.from_dict(dict(d["net"])),
            genes=list(d["genes"]),
            version=str(d.get("version", __version__)),
            **setup,
        )
