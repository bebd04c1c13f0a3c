"""``DomainProbe``: how well the embedding finds labelled spatial domains, measured while pretraining.

The validation loss of masked reconstruction is a poor guide to what the embedding is for: retrained on storm-mini's
corpus, runs with a lower validation loss found domains less well (``benchmarks/pretraining_steps.py``). The probe
scores the model as a user would use it, on labelled slides: the niche embedding of every spot, standardised and
reduced to 20 principal components, a tied-covariance Gaussian mixture with K = the number of labels, and the ARI
against the labels (:func:`storm.tl.domains`' default). Its scores are logged beside the losses (``probe/ari`` and
one ``probe/ari/<slide>`` per slide), so that runs and step budgets are compared on what the embedding is for.

scikit-learn does the clustering; AnnData is not needed (the slides come prepared, as :class:`SlideArrays`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch import Callback

if TYPE_CHECKING:
    from storm._slide_data import SlideArrays
    from storm.models import StormModel

__all__ = ["DomainProbe"]


class DomainProbe(Callback):
    """Log the spatial-domain ARI of labelled slides every ``every_n_steps`` optimiser steps.

    Parameters
    ----------
    model
        The :class:`~storm.models.StormModel` being trained (its ``module`` is the network the Lightning module
        trains, so the probe sees the current weights).
    slides
        Labelled slides, prepared by :meth:`storm.models.StormModel.prepare` in the mode :func:`storm.tl.embed` would
        use (:func:`storm.train.build_probe` does this), so the probe scores what a user of the model gets.
    labels
        One array per slide, in the slide's spot order: the label of each spot, ``None`` for a spot left out of the
        score (K counts the distinct labels scored).
    names
        One name per slide, for the per-slide metrics (default ``slide0``, ``slide1``, …).
    every_n_steps
        Probe when the global step is a multiple of this; also before the first step and after the last.
    n_pcs, random_state
        As in :func:`storm.tl.domains`.
    batch_size
        Spots per forward pass.

    Attributes
    ----------
    history
        One dict per probe: ``step``, ``probe/ari`` (mean over slides) and ``probe/ari/<name>`` per slide.

    Raises
    ------
    ValueError
        Slides and labels that do not match, or a slide with fewer than two labels scored.
    """

    def __init__(
        self,
        model: StormModel,
        slides: Sequence[SlideArrays],
        labels: Sequence[Sequence[Any]],
        *,
        names: Sequence[str] | None = None,
        every_n_steps: int = 100,
        n_pcs: int = 20,
        random_state: int = 0,
        batch_size: int = 256,
    ) -> None:
        super().__init__()
        names = list(names) if names is not None else [f"slide{i}" for i in range(len(slides))]
        if not slides or len(slides) != len(labels) or len(names) != len(slides):
            raise ValueError(
                f"DomainProbe needs one label array and one name per slide; got {len(slides)} slides, "
                f"{len(labels)} label arrays and {len(names)} names."
            )
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"`every_n_steps` must be a positive integer, got {every_n_steps!r}.")
        self.targets: list[tuple[str, np.ndarray, np.ndarray]] = []  # name, scored positions, their labels
        for name, slide, lab in zip(names, slides, labels, strict=True):
            lab = np.asarray(lab, dtype=object)
            if len(lab) != slide.n_obs:
                raise ValueError(f"Probe slide {name!r} has {slide.n_obs} spots but {len(lab)} labels.")
            scored = np.flatnonzero([x is not None and x == x for x in lab])  # x == x: not NaN
            if len({lab[i] for i in scored}) < 2:
                raise ValueError(f"Probe slide {name!r} has fewer than two distinct labels: nothing to score.")
            self.targets.append((name, scored, lab[scored].astype(str)))
        self.model = model
        self.slides = list(slides)
        self.every_n_steps = every_n_steps
        self.n_pcs = n_pcs
        self.random_state = random_state
        self.batch_size = batch_size
        self.history: list[dict[str, float]] = []

    def niche_embedding(self, slide: SlideArrays, device: torch.device) -> np.ndarray:
        """Return the niche embedding of every spot of ``slide`` (slide order) with the current weights."""
        n_rows = int(slide.obs_rows.max()) + 1
        _, niche = self.model.embed_prepared(
            [slide], n_rows, batch_size=self.batch_size, accelerator=device, niche=True, progress=False
        )
        return niche[slide.obs_rows]

    def score(self, device: torch.device | str = "cpu") -> dict[str, float]:
        """ARI of each slide's domains and their mean, with the current weights."""
        from sklearn.metrics import adjusted_rand_score

        from storm._gmm import fit_gmm, reduce_rep

        device = torch.device(device)
        scores: dict[str, float] = {}
        for (name, scored, truth), slide in zip(self.targets, self.slides, strict=True):
            rep = reduce_rep(self.niche_embedding(slide, device).astype(np.float64), self.n_pcs, self.random_state)
            pred = fit_gmm(rep, len(set(truth)), self.random_state)
            scores[f"probe/ari/{name}"] = float(adjusted_rand_score(truth, pred[scored]))
        scores["probe/ari"] = float(np.mean(list(scores.values())))
        return scores

    def _probe(self, trainer: Any, pl_module: Any) -> None:
        step = int(trainer.global_step)
        if not trainer.is_global_zero or (self.history and self.history[-1]["step"] == step):
            return
        scores = self.score(pl_module.device)
        self.history.append({"step": step, **scores})
        if trainer.logger is not None:
            trainer.logger.log_metrics(scores, step=step)

    def state_dict(self) -> dict[str, Any]:
        """Return the history, saved in Lightning checkpoints so that a resumed run keeps its earlier probes."""
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history of a checkpoint."""
        self.history = list(state_dict.get("history", []))

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._probe(trainer, pl_module)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._probe(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._probe(trainer, pl_module)
