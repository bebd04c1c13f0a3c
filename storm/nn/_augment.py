"""Training augmentations of H&E patches: HED stain jitter and the eight flips/rotations of the square."""

from __future__ import annotations

import torch

from ._stain_features import RGB_FROM_HED, _hed_from_rgb

__all__ = ["augment_patches", "hed_jitter"]


def hed_jitter(
    patches: torch.Tensor, *, sigma: float = 0.05, bias: float = 0.05, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomly perturb each patch's haematoxylin, eosin and DAB concentrations (Tellez et al. 2018, "HED jitter").

    Colour deconvolution (Ruifrok & Johnston 2001) splits each pixel's optical density into H, E and DAB; each
    stain of each patch is scaled by ``α ~ U(1 - sigma, 1 + sigma)`` and shifted by ``β ~ U(-bias, bias)`` (in OD
    units), and the patch is recomposed. Models trained on such copies see the stain variation of other labs and
    scanners; Tellez et al. ("Quantifying the effects of data augmentation and stain color normalization in
    convolutional neural networks for computational pathology", Med Image Anal 2019) found HED jitter with light
    normalisation the best pair across centres.

    Parameters
    ----------
    patches
        ``(N, 3, H, W)`` uint8 RGB.
    sigma
        Half-width of the multiplicative factor per stain.
    bias
        Half-width of the additive shift per stain (OD units; tissue OD is about 0.1–1).
    generator
        Random generator.

    Returns
    -------
    torch.Tensor
        uint8, the shape of ``patches``.
    """
    if patches.dtype != torch.uint8 or patches.ndim != 4 or patches.shape[1] != 3:
        raise ValueError(
            f"hed_jitter takes (N, 3, H, W) uint8 RGB patches, got {patches.dtype} {tuple(patches.shape)}."
        )
    n = patches.shape[0]
    od = -torch.log10((patches.float() + 1.0) / 256.0)
    conc = torch.einsum("nchw,cd->ndhw", od, _hed_from_rgb())
    alpha = 1 + (torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1) * sigma
    beta = (torch.rand(n, 3, 1, 1, generator=generator) * 2 - 1) * bias
    # the shift only where there is stain: bare glass stays glass
    stained = (od.sum(1, keepdim=True) > 0.15).float()
    conc = conc * alpha + beta * stained
    m = torch.tensor(RGB_FROM_HED, dtype=torch.float32)
    m = m / torch.linalg.vector_norm(m, dim=1, keepdim=True)
    od_new = torch.einsum("ndhw,dc->nchw", conc, m)
    rgb = 256.0 * torch.pow(10.0, -od_new) - 1.0
    return rgb.round().clamp(0, 255).to(torch.uint8)


def augment_patches(
    patches: torch.Tensor, *, sigma: float = 0.05, bias: float = 0.05, generator: torch.Generator | None = None
) -> torch.Tensor:
    """HED jitter (:func:`hed_jitter`), then one of the 8 rotations/flips of the square per patch.

    Tissue has no up or down, so the dihedral group is a free eightfold augmentation; the stain jitter covers
    other labs' and scanners' colours.

    Parameters
    ----------
    patches
        ``(N, 3, H, W)`` uint8 RGB with ``H == W``.
    sigma
        Half-width of the multiplicative factor per stain (see :func:`hed_jitter`).
    bias
        Half-width of the additive shift per stain (OD units).
    generator
        Random generator (the jitter, the rotation and the flip all draw from it).

    Returns
    -------
    torch.Tensor
        An augmented copy, uint8, the shape of ``patches``.
    """
    out = hed_jitter(patches, sigma=sigma, bias=bias, generator=generator)
    k = torch.randint(4, (out.shape[0],), generator=generator)
    flip = torch.rand(out.shape[0], generator=generator) < 0.5
    for r in range(4):
        for f in (False, True):
            sel = (k == r) & (flip == f)
            if sel.any():
                part = torch.rot90(out[sel], r, dims=(2, 3))
                out[sel] = part.flip(3) if f else part
    return out
