"""Exponential-moving-average teacher (stop-gradient target network)."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMATeacher"]


class EMATeacher(nn.Module):
    """A frozen copy of a module whose weights follow the student's by an exponential moving average.

    ``θ_teacher ← m · θ_teacher + (1 - m) · θ_student`` after each optimiser step (:meth:`update`), as in BYOL
    (Grill et al. 2020), DINO (Caron et al. 2021) and data2vec (Baevski et al. 2022). The teacher never receives
    gradients (``requires_grad=False``, forward under ``no_grad``) and always runs in eval mode. Its weights are
    in the parent's ``state_dict`` so that training resumes exactly; drop them when exporting for inference.

    Parameters
    ----------
    student
        The module to track (copied at construction).
    momentum
        ``m`` in ``[0, 1]``; may be changed during training (e.g. a cosine schedule towards 1).
    """

    def __init__(self, student: nn.Module, momentum: float = 0.996) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}.")
        self.momentum = float(momentum)
        self.module = copy.deepcopy(student)
        self.module.requires_grad_(False)
        self.module.eval()

    def train(self, mode: bool = True) -> EMATeacher:
        """Keep the teacher in eval mode whatever the parent's mode (dropout/normalisation stay deterministic)."""
        super().train(False)
        return self

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float | None = None) -> None:
        """Move the teacher towards ``student``: ``θ_t ← m θ_t + (1 - m) θ_s``; buffers are copied.

        Parameters
        ----------
        student
            Module with the same structure as the teacher.
        momentum
            Overrides ``momentum`` for this update.
        """
        m = self.momentum if momentum is None else float(momentum)
        for t, s in zip(self.module.parameters(), student.parameters(), strict=True):
            t.lerp_(s.detach().to(t.dtype), 1.0 - m)
        for t, s in zip(self.module.buffers(), student.buffers(), strict=True):
            t.copy_(s)

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        """Run the teacher without gradients."""
        return self.module(*args, **kwargs)
