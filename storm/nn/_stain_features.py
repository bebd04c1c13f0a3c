"""Training-free colour, stain and texture features of H&E patches (a baseline image encoder with no weights)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._image_encoders import ImageEncoder, to_unit_float

__all__ = ["RGB_FROM_HED", "StainTextureFeaturizer", "rgb_to_hed"]

#: Optical-density vectors of haematoxylin, eosin and DAB (rows), from Ruifrok & Johnston, "Quantification of
#: histochemical staining by color deconvolution", Anal Quant Cytol Histol 23:291-299 (2001); the same values
#: as scikit-image's ``rgb_from_hed``. Rows are normalised to unit length before inversion, as in the paper.
RGB_FROM_HED: tuple[tuple[float, float, float], ...] = (
    (0.65, 0.70, 0.29),
    (0.07, 0.99, 0.11),
    (0.27, 0.57, 0.78),
)


def _hed_from_rgb() -> torch.Tensor:
    m = torch.tensor(RGB_FROM_HED, dtype=torch.float64)
    m = m / torch.linalg.vector_norm(m, dim=1, keepdim=True)
    return torch.linalg.inv(m).float()


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """Colour deconvolution of RGB into haematoxylin, eosin and DAB concentrations (Ruifrok & Johnston 2001).

    Beer–Lambert: optical density ``OD = -log10(I / I0)`` is linear in the stain concentrations,
    ``OD = C · M`` with ``M`` the stains' OD vectors (rows), so ``C = OD · M⁻¹``.

    Parameters
    ----------
    rgb
        ``(N, 3, H, W)`` float in ``[0, 1]``.

    Returns
    -------
    torch.Tensor
        ``(N, 3, H, W)`` concentrations (H, E, DAB); ≈ 0 on white background, larger where stained.
    """
    # (255·I + 1) / 256 keeps the logarithm finite on black pixels; white (I = 1) maps to OD ≈ 0.
    od = -torch.log10((rgb.float() * 255.0 + 1.0) / 256.0)
    return torch.einsum("nchw,cd->ndhw", od, _hed_from_rgb().to(od.device))


def _quantiles(x: torch.Tensor, qs: Sequence[float]) -> torch.Tensor:
    """Linear-interpolation quantiles along the last axis (sort-based: no size limit, deterministic)."""
    xs = x.sort(dim=-1).values
    n = xs.shape[-1]
    out = []
    for q in qs:
        pos = q * (n - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        frac = pos - lo
        out.append(xs[..., lo] * (1 - frac) + xs[..., hi] * frac)
    return torch.stack(out, dim=-1)


def _gabor_bank(frequency: float, n_orientations: int) -> torch.Tensor:
    """Even and odd Gabor kernels at one frequency (σ = 0.56 / f: one octave of bandwidth), ``(2·O, 1, k, k)``."""
    sigma = 0.56 / frequency
    half = math.ceil(3 * sigma)
    yy, xx = torch.meshgrid(
        torch.arange(-half, half + 1, dtype=torch.float64),
        torch.arange(-half, half + 1, dtype=torch.float64),
        indexing="ij",
    )
    envelope = torch.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    kernels = []
    for k in range(n_orientations):
        theta = math.pi * k / n_orientations
        u = xx * math.cos(theta) + yy * math.sin(theta)
        even = envelope * torch.cos(2 * math.pi * frequency * u)
        even = even - even.mean()  # zero DC: flat regions give no response
        odd = envelope * torch.sin(2 * math.pi * frequency * u)
        kernels += [even / envelope.sum(), odd / envelope.sum()]
    return torch.stack(kernels).unsqueeze(1).float()


class StainTextureFeaturizer(ImageEncoder):
    """Fixed, training-free features of H&E patches: colour, stain (HED) and texture statistics.

    Per patch: mean, standard deviation and quantiles of each RGB channel and of the haematoxylin, eosin and DAB
    concentrations from colour deconvolution (Ruifrok & Johnston 2001); the tissue fraction (optical density
    above ``background_od``); Sobel gradient-magnitude statistics of the luminance and of the haematoxylin
    channel (nuclear edges); the standard deviation of their Laplacians (focus / fine detail); mean Gabor
    energies at a few frequencies and orientations; and an LBP-like histogram of how many of the 8 neighbours are
    brighter than each pixel (Ojala et al. 2002, rotation-invariant count). No parameters: the output is a
    deterministic function of the pixels; ``feature_names`` names each column.

    Texture statistics depend on the pixel scale: featurise training and new data at the same µm per pixel.

    Parameters
    ----------
    quantiles
        Quantiles of each colour/stain channel.
    gabor_scales
        Downsampling factors at which the Gabor bank (0.25 cycles/px) is applied; scale ``s`` probes
        ``0.25 / s`` cycles per original pixel. Downsampling instead of larger kernels keeps it fast on CPU.
    gabor_orientations
        Number of Gabor orientations in ``[0, π)``.
    background_od
        Summed optical density below which a pixel counts as background.
    lbp_threshold
        Intensity margin for the LBP-like neighbour comparison (suppresses noise on flat background).
    quantile_stride
        Quantiles are taken on every ``quantile_stride``-th row and column (sorting all pixels dominates the run
        time otherwise; the quantiles of a patch change little).
    chunk_size
        Patches processed at once (bounds memory on 224 px patches).
    """

    trainable = False

    def __init__(
        self,
        *,
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        gabor_scales: Sequence[int] = (1, 2),
        gabor_orientations: int = 4,
        background_od: float = 0.15,
        lbp_threshold: float = 0.02,
        quantile_stride: int = 2,
        chunk_size: int = 256,
    ) -> None:
        super().__init__()
        self.quantiles = tuple(float(q) for q in quantiles)
        self.background_od = background_od
        self.lbp_threshold = lbp_threshold
        self.chunk_size = chunk_size
        self.quantile_stride = quantile_stride
        self.gabor_scales = tuple(int(s) for s in gabor_scales)
        self.gabor_orientations = gabor_orientations
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
        self.register_buffer("sobel", torch.stack([sobel, sobel.T]).unsqueeze(1), persistent=False)
        lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("laplacian", lap.view(1, 1, 3, 3), persistent=False)
        self.register_buffer("gabor", _gabor_bank(0.25, gabor_orientations), persistent=False)

        names = []
        stats = ["mean", "std", *[f"q{round(100 * q)}" for q in self.quantiles]]
        for ch in ("r", "g", "b", "hed_h", "hed_e", "hed_d"):
            names += [f"{ch}_{s}" for s in stats]
        names += ["tissue_fraction", "grad_mean", "grad_std", "grad_q90", "hed_h_grad_mean"]
        names += ["laplacian_std", "hed_h_laplacian_std"]
        names += [f"gabor_s{s}_o{k}" for s in self.gabor_scales for k in range(gabor_orientations)]
        names += [f"lbp_{k}" for k in range(9)]
        self.feature_names: list[str] = names
        self.out_dim = len(names)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Featurise ``(N, 3, H, W)`` uint8 or ``[0, 1]`` float patches into ``(N, out_dim)`` float32."""
        rgb = to_unit_float(patches)
        if rgb.shape[0] == 0:
            return rgb.new_zeros(0, self.out_dim, dtype=torch.float32)
        return torch.cat([self._features(c.float()) for c in rgb.split(self.chunk_size)], dim=0)

    def _conv(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        pad = kernel.shape[-1] // 2
        # Replicate padding: no artificial edges at the border, and it works for patches smaller than the kernel.
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), kernel)

    def _features(self, rgb: torch.Tensor) -> torch.Tensor:
        n = rgb.shape[0]
        hed = rgb_to_hed(rgb)
        channels = torch.cat([rgb, hed], dim=1)  # (N, 6, H, W)
        st = self.quantile_stride
        sub = channels[..., ::st, ::st].flatten(2)
        channels = channels.flatten(2)
        colour = torch.cat(
            [
                channels.mean(-1, keepdim=True),
                channels.std(-1, correction=0, keepdim=True),
                _quantiles(sub, self.quantiles),
            ],
            dim=-1,
        ).flatten(1)
        od_sum = -torch.log10((rgb * 255.0 + 1.0) / 256.0).sum(1)
        tissue = (od_sum > self.background_od).float().flatten(1).mean(-1, keepdim=True)

        gray = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).unsqueeze(1)
        h_chan = hed[:, :1]
        g = self._conv(gray, self.sobel)
        grad = torch.sqrt(g.pow(2).sum(1) + 1e-12).flatten(1)
        gh = self._conv(h_chan, self.sobel)
        grad_h = torch.sqrt(gh.pow(2).sum(1) + 1e-12).flatten(1)
        grad_sub = grad.view(n, *gray.shape[-2:])[:, ::st, ::st].flatten(1)
        gradient = torch.stack(
            [grad.mean(-1), grad.std(-1, correction=0), _quantiles(grad_sub, (0.9,))[:, 0], grad_h.mean(-1)], dim=-1
        )
        lap = torch.stack(
            [
                self._conv(gray, self.laplacian).flatten(1).std(-1, correction=0),
                self._conv(h_chan, self.laplacian).flatten(1).std(-1, correction=0),
            ],
            dim=-1,
        )
        gabor = []
        for s in self.gabor_scales:
            g_s = F.avg_pool2d(gray, s, ceil_mode=True) if s > 1 else gray
            resp = self._conv(g_s, self.gabor)  # (N, 2·O, h, w): even/odd pairs per orientation
            energy = torch.sqrt(resp.unflatten(1, (self.gabor_orientations, 2)).pow(2).sum(2) + 1e-12)
            gabor.append(energy.mean(dim=(2, 3)))
        gabor_t = torch.cat(gabor, dim=-1)

        padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
        h, w = gray.shape[-2:]
        count = torch.zeros_like(gray)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                if dy == 1 and dx == 1:
                    continue
                count += (padded[..., dy : dy + h, dx : dx + w] > gray + self.lbp_threshold).float()
        lbp = F.one_hot(count.long().flatten(1), num_classes=9).float().mean(1)
        out = torch.cat([colour, tissue, gradient, lap, gabor_t, lbp], dim=-1)
        assert out.shape == (n, self.out_dim)  # internal invariant, not user input
        return out
