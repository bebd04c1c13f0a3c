"""Physical scale of each slide (µm per pixel) and the image its patches are cut from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import pandas as pd
from anndata import AnnData

from storm._logging import logger
from storm._wsi_reader import LevelArray, WholeSlideImage, is_whole_slide
from storm.io._image import LazyImage
from storm.io._spatial import check_fit, fit_pixels_per_micron, to_rgb_uint8

from ._validate import check_libraries, check_positive, check_spatial

#: Grid platforms: centre-to-centre spot pitch in µm (Visium: hexagonal; legacy ST: square).
VISIUM_PITCH_UM = 100.0
ST_PITCH_UM = 200.0
#: What 10x calls the spot of ``spot_diameter_fullres`` ("a theoretical 65 µm spot", Space Ranger ≥ 1.3), not the
#: 55 µm capture area: 55 / spot_diameter_fullres underestimates µm per pixel by ~15 % on the squidpy Visium crop
#: and by ~21 % on DLPFC (whose older Space Ranger diameter fits neither), hence the grid fit comes first.
SPACERANGER_SPOT_UM = 65.0
GRID_PLATFORMS = ("visium", "st")
IMAGE_CHOICES = ("auto", "fullres", "hires", "lowres")


@dataclass(frozen=True)
class SlideScale:
    """µm per full-resolution pixel of one slide and where that number came from."""

    microns_per_pixel: float
    source: str


@dataclass
class SlideImage:
    """The image a slide's patches are cut from, with its scale relative to full-resolution pixels."""

    name: str  # "fullres", "hires" or "lowres"
    scalef: float  # image px per full-res px (1 / the level's downsample for a whole-slide image)
    shape: tuple[int, int]  # (height, width)
    source: LazyImage | LevelArray | np.ndarray
    level: int | None = None  # pyramid level of a whole-slide image

    def array(self) -> np.ndarray | LevelArray:
        """Return the pixels as a uint8 (height, width, 3) RGB array (decoding a full-resolution file once).

        A whole-slide image's level stays lazy: its slices read only the tiles they cover.
        """
        if isinstance(self.source, LazyImage):
            return self.source.load()
        if isinstance(self.source, LevelArray):
            return self.source
        return to_rgb_uint8(self.source)

    def centres(self, xy: np.ndarray) -> np.ndarray:
        """Continuous coordinates in this image (pixel ``i`` spans ``[i, i + 1)``) of full-resolution pixel indices."""
        return image_centres(xy, self.scalef, pyramid=self.level is not None)

    def close(self) -> None:
        """Release what the image holds (decoded pixels, file handles)."""
        if hasattr(self.source, "release"):
            self.source.release()


def image_centres(xy: np.ndarray, scalef: float, *, pyramid: bool) -> np.ndarray:
    """Continuous coordinates, in an image of ``scalef`` px per full-res px, of full-resolution pixel indices ``xy``.

    A pyramid level samples the full-resolution grid exactly: pixel index ``p`` spans ``[p, p + 1)`` at full
    resolution, so ``[p·s, (p + 1)·s)`` in the level, centred on ``(p + 0.5)·s``. A ``hires``/``lowres`` image keeps
    scanpy's convention, which plots a spot at index ``p·s`` of that image (centre ``p·s + 0.5``).
    """
    xy = np.asarray(xy, dtype=np.float64)
    return (xy + 0.5) * scalef if pyramid else xy * scalef + 0.5


def _slide_entry(adata: AnnData, library_id: str) -> dict:
    return adata.uns["spatial"][library_id]


def slide_platform(adata: AnnData, library_id: str) -> str | None:
    """Return ``metadata['platform']`` (lower case) of a slide.

    Without one, a slide with ``spot_diameter_fullres`` is taken to be Visium: :func:`scanpy.read_visium` writes
    Space Ranger's scale factors but no platform.
    """
    entry = _slide_entry(adata, library_id)
    platform = (entry.get("metadata") or {}).get("platform")
    if platform:
        return str(platform).lower()
    if "spot_diameter_fullres" in (entry.get("scalefactors") or {}):
        return "visium"
    return None


def _grid_um(array_rc: np.ndarray, platform: str) -> tuple[np.ndarray, float]:
    """Physical (x, y) in µm of grid positions (row, col), and the pitch.

    Legacy ST: a spot every 200 µm both ways (col = x, row = y). Visium: columns step 2 per spot within a row (50 µm
    per column unit), rows 100·√3/2 µm apart.
    """
    row, col = array_rc[:, 0], array_rc[:, 1]
    if platform == "st":
        return np.column_stack([col * ST_PITCH_UM, row * ST_PITCH_UM]), ST_PITCH_UM
    return np.column_stack([col * VISIUM_PITCH_UM / 2, row * VISIUM_PITCH_UM * np.sqrt(3) / 2]), VISIUM_PITCH_UM


#: Accepted ratio of the spot pitch measured in ``obsm['spatial']`` to each of a slide's own full-resolution scale
#: factors. The grid fit reproduces ``spot_pitch_fullres`` (and 100 µm / ``microns_per_pixel``) to < 1 % on the
#: readers' slides. Space Ranger's ``spot_diameter_fullres`` is a "theoretical 65 µm spot" (pitch / diameter = 1.54
#: on the squidpy crop), 55 µm in early versions (1.82) and 96.4 px for a 137 px pitch on DLPFC (1.42), hence its
#: wider band. A hires image is 0.05–0.6× full resolution and a lowres one 0.02–0.2×: both fall outside.
PITCH_RATIO = (0.8, 1.25)
DIAMETER_PITCH_RATIO = (1.15, 2.05)


def _positive(value: object) -> bool:
    try:
        return bool(np.isfinite(float(value)) and float(value) > 0)
    except (TypeError, ValueError):
        return False


def check_pixel_units(
    pitch_px: float, scalefactors: dict, library_id: str, *, platform: str, pitch_um: float, nearest_neighbour: bool
) -> None:
    """Refuse ``obsm['spatial']`` whose spot pitch contradicts the slide's own full-resolution scale factors.

    ``pitch_px``, the spot pitch measured in ``obsm['spatial']``, is compared with ``spot_pitch_fullres``, with
    ``pitch_um / microns_per_pixel`` (both within :data:`PITCH_RATIO`) and, on Visium, with ``spot_diameter_fullres``
    (within :data:`DIAMETER_PITCH_RATIO`). A mismatch matching ``tissue_hires_scalef`` or ``tissue_lowres_scalef`` is
    named: coordinates taken from a scaled image. ``nearest_neighbour``: the pitch is the median nearest-neighbour
    distance (no array grid to fit), which a subset of the spots lengthens and positions off a grid can make
    anything: only a pitch too short by one of those two factors is refused then.

    Raises
    ------
    ValueError
        On the first scale factor that disagrees.
    """
    references = []  # (what, pitch in px it implies at ratio 1, accepted ratios)
    if _positive(scalefactors.get("spot_pitch_fullres")):
        references.append(("spot_pitch_fullres", float(scalefactors["spot_pitch_fullres"]), PITCH_RATIO))
    if _positive(scalefactors.get("microns_per_pixel")):
        mpp = float(scalefactors["microns_per_pixel"])
        references.append((f"microns_per_pixel ({mpp:.4g}: {pitch_um:g} µm)", pitch_um / mpp, PITCH_RATIO))
    if platform == "visium" and _positive(scalefactors.get("spot_diameter_fullres")):
        # centre the band on 1.54 (a 65 µm spot on a 100 µm pitch) so that the factor found below is the image's
        typical = VISIUM_PITCH_UM / SPACERANGER_SPOT_UM
        diameter = float(scalefactors["spot_diameter_fullres"])
        band = tuple(r / typical for r in DIAMETER_PITCH_RATIO)
        references.append((f"spot_diameter_fullres ({diameter:.1f} px × {typical:.2f})", diameter * typical, band))
    where = f"uns['spatial'][{library_id!r}]['scalefactors']"
    for what, want_px, (low, high) in references:
        ratio = pitch_px / want_px
        if ratio >= low and (nearest_neighbour or ratio <= high):
            continue
        scaled = {
            key: float(scalefactors[key])
            for key in ("tissue_hires_scalef", "tissue_lowres_scalef")
            if _positive(scalefactors.get(key)) and abs(np.log(ratio / float(scalefactors[key]))) < np.log(1.15)
        }
        if nearest_neighbour and not scaled:
            continue
        if scaled:
            key, factor = min(scaled.items(), key=lambda kv: abs(np.log(ratio / kv[1])))
            cause = (
                f"the ratio {ratio:.3f} matches {key} = {factor:.4g}: obsm['spatial'] holds pixels of the "
                f"{key.split('_')[1]} image, not of the full-resolution one. Divide it by that factor "
                f"(`adata.obsm['spatial'] = adata.obsm['spatial'] / {factor:.6g}`)"
            )
        else:
            cause = (
                f"a ratio of {ratio:.3f}, which no scale factor of the slide explains: obsm['spatial'] must be "
                f"full-resolution pixels. Rescale it, or correct {where}"
            )
        raise ValueError(
            f"The spot pitch in obsm['spatial'] of slide {library_id!r} is {pitch_px:.1f} px, but {where} say "
            f"{want_px:.1f} px ({what}): {cause}. Nothing was changed."
        )


def _nearest_neighbour_pitch(xy: np.ndarray) -> float | None:
    """Median distance from each spot to its nearest neighbour (pixels), or None for fewer than 2 distinct spots."""
    from scipy.spatial import cKDTree

    xy = xy[np.isfinite(xy).all(1)]
    if len(xy) < 2:
        return None
    distance, _ = cKDTree(xy).query(xy, k=2)
    pitch = float(np.median(distance[:, 1]))
    return pitch if pitch > 0 else None


def slide_scale(adata: AnnData, library_id: str, rows: np.ndarray, xy: np.ndarray | None = None) -> SlideScale:
    """Return µm per full-resolution pixel of a slide.

    Order: ``scalefactors['microns_per_pixel']``; on Visium and legacy ST a least-squares fit of ``obsm['spatial']``
    against the spots' grid positions ``obs['array_row'/'array_col']`` (``rows``: the obs rows of that slide) on the
    100 µm / 200 µm pitch; on Visium without array coordinates ``65 / spot_diameter_fullres`` (approximate; logged).
    On those grid platforms the spot pitch of ``obsm['spatial']`` (from the fit, else nearest neighbours) is checked
    against the slide's own scale factors (:func:`check_pixel_units`), and swapped ``array_row``/``array_col`` of a
    Visium grid are refused (:func:`storm.io._spatial.check_fit`), whether or not ``microns_per_pixel`` is given.

    Raises
    ------
    ValueError
        If none of these applies (no scale), or ``obsm['spatial']`` is not in full-resolution pixels of the slide, or
        its Visium grid columns are swapped.
    """
    entry = _slide_entry(adata, library_id)
    sf = entry.get("scalefactors") or {}
    where = f"`uns['spatial'][{library_id!r}]['scalefactors']`"
    given = sf.get("microns_per_pixel")
    if given is not None:
        try:
            check_positive(float(given), "microns_per_pixel")
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}['microns_per_pixel'] = {given!r} is not a positive number.") from err
    platform = slide_platform(adata, library_id)
    if platform not in GRID_PLATFORMS:
        if given is not None:
            return SlideScale(float(given), "microns_per_pixel")
        _no_scale(library_id, platform, where, "")
    if xy is None:
        xy = check_spatial(adata)
    pitch_um = VISIUM_PITCH_UM if platform == "visium" else ST_PITCH_UM
    fit, fit_error = None, ""
    if {"array_row", "array_col"} <= set(adata.obs.columns):
        grid, _ = _grid_um(adata.obs[["array_row", "array_col"]].to_numpy(dtype=np.float64)[rows], platform)
        try:
            fit = fit_pixels_per_micron(grid, xy[rows], what=f"spots of slide {library_id!r}")
        except ValueError as err:
            fit_error = f" ({err})"
        else:
            check_fit(fit, pitch_um, library_id, hexagonal=platform == "visium")
    pitch_px = pitch_um * fit.px_per_um if fit is not None else _nearest_neighbour_pitch(xy[rows])
    if pitch_px is not None:
        check_pixel_units(pitch_px, sf, library_id, platform=platform, pitch_um=pitch_um, nearest_neighbour=fit is None)
    if given is not None:
        return SlideScale(float(given), "microns_per_pixel")
    if fit is not None:
        return SlideScale(1.0 / fit.px_per_um, f"{platform}_pitch_fit")
    diameter = sf.get("spot_diameter_fullres")
    if platform == "visium" and _positive(diameter):
        logger.warning(
            f"Slide {library_id!r}: no `microns_per_pixel` and no spot grid to fit; using {SPACERANGER_SPOT_UM:g} µm / "
            "spot_diameter_fullres, which is only approximate (10x's 'theoretical spot'). Add obs['array_row'/"
            "'array_col'] or set `microns_per_pixel`."
        )
        return SlideScale(SPACERANGER_SPOT_UM / float(diameter), "spot_diameter_fullres")
    _no_scale(library_id, platform, where, fit_error)


def _no_scale(library_id: str, platform: str | None, where: str, fit_error: str) -> NoReturn:
    hint = {
        "st": "add obs['array_row'/'array_col'] (the spot grid) to fit the 200 µm pitch, or set it",
        "visium": "add obs['array_row'/'array_col'] (the spot grid) to fit the 100 µm pitch, or set it",
    }.get(platform or "", "set it (cells/bins with µm coordinates: 1.0)")
    raise ValueError(
        f"No physical scale for slide {library_id!r} (platform {platform!r}){fit_error}: {where} has no "
        f"'microns_per_pixel' and none can be derived. {hint[0].upper() + hint[1:]}: "
        f"{where}['microns_per_pixel'] = µm per full-res pixel."
    )


def slide_image(adata: AnnData, library_id: str, image: str = "auto", *, downsample: float = 1.0) -> SlideImage:
    """Pick the image of a slide that patches are cut from (reading only a full-resolution file's header).

    ``"auto"``: the full-resolution file (``metadata['fullres_path']``) when recorded, else ``images['hires']``,
    else ``images['lowres']``. A whole-slide file (:func:`storm._wsi_reader.is_whole_slide`: SVS, pyramidal TIFF, …)
    is read at its pyramid level nearest ``downsample`` (full-resolution px per patch px wanted) without being
    coarser (:meth:`storm.io.WholeSlideImage.best_level`); other files are decoded whole when first used.

    Raises
    ------
    ValueError
        If ``image`` is not a known choice or the slide has no such image.
    FileNotFoundError
        If a recorded ``fullres_path`` does not exist.
    """
    if image not in IMAGE_CHOICES:
        raise ValueError(f"`image` must be one of {IMAGE_CHOICES}, got {image!r}.")
    entry = _slide_entry(adata, library_id)
    images = entry.get("images") or {}
    sf = entry.get("scalefactors") or {}
    path = (entry.get("metadata") or {}).get("fullres_path")
    where = f"`uns['spatial'][{library_id!r}]`"
    if image in ("auto", "fullres") and path:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Slide {library_id!r} records a full-resolution image at {path!r}, which does not exist. Fetch it "
                "again (the `storm.datasets` loader), fix `metadata['fullres_path']`, or pass `image='hires'`."
            )
        if is_whole_slide(path):
            wsi = WholeSlideImage(path)
            level = wsi.best_level(downsample)
            return SlideImage(
                "fullres", 1.0 / wsi.level_downsamples[level], wsi.level_shapes[level], wsi.level(level), level
            )
        lazy = LazyImage(path)
        return SlideImage("fullres", 1.0, lazy.shape[:2], lazy)
    if image == "fullres":
        raise ValueError(
            f"Slide {library_id!r} has no full-resolution image: {where}['metadata'] has no 'fullres_path'."
        )
    for name in ("hires", "lowres") if image == "auto" else (image,):
        if name in images:
            key = f"tissue_{name}_scalef"
            if key not in sf:
                raise ValueError(
                    f"{where}['images'][{name!r}] has no scale factor: set {where}['scalefactors'][{key!r}]."
                )
            scalef = float(sf[key])
            check_positive(scalef, key)
            arr = np.asarray(images[name])
            if arr.ndim not in (2, 3):
                raise ValueError(f"{where}['images'][{name!r}] has shape {arr.shape}; expected (height, width, 3).")
            return SlideImage(name, scalef, (int(arr.shape[0]), int(arr.shape[1])), arr)
    wanted = "no image at all" if image == "auto" else f"no {image!r} image"
    raise ValueError(
        f"Slide {library_id!r} has {wanted}: add {where}['metadata']['fullres_path'] (a full-resolution file) or "
        f"{where}['images']['hires'|'lowres'] with its `tissue_*_scalef`."
    )


def patch_scale(
    adata: AnnData,
    *,
    size_um: float = 55.0,
    out_px: int = 224,
    library_id: str | None = None,
    image: str = "auto",
    library_key: str = "library_id",
) -> pd.DataFrame:
    """Report the pixel scale :func:`storm.pp.extract_patches` uses on each slide, without decoding any image.

    Parameters
    ----------
    adata
        Spots with ``obsm['spatial']`` (full-resolution pixels) and ``uns['spatial'][library_id]``.
    size_um
        Side of a patch in µm.
    out_px
        Side of a patch in pixels after resizing.
    library_id
        Only this slide; default: every slide in ``adata.obs[library_key]``.
    image
        ``"auto"``, ``"fullres"``, ``"hires"`` or ``"lowres"`` (see :func:`storm.pp.extract_patches`).
    library_key
        Column of ``adata.obs`` that names each spot's slide.

    Returns
    -------
    One row per slide (index ``library_id``) with columns ``image`` (the image used), ``level`` (the pyramid level
    read from a whole-slide image; -1 for other images), ``image_height``, ``image_width`` (of that level),
    ``scalef`` (image px per full-res px), ``microns_per_pixel`` (µm per full-res px),
    ``mpp_source`` (``"microns_per_pixel"``, ``"visium_pitch_fit"``, ``"st_pitch_fit"`` or
    ``"spot_diameter_fullres"``), ``image_microns_per_pixel``, ``crop_px`` (``size_um`` in image pixels), ``zoom``
    (``out_px / crop_px``; above 1 the patch is upsampled), ``n_spots`` and ``n_outside`` (spot centres outside the
    image, which :func:`storm.pp.extract_patches` refuses: a sign of a wrong scale factor). ``adata`` is not modified.
    """
    check_positive(size_um, "size_um")
    check_positive(out_px, "out_px", integer=True)
    xy = check_spatial(adata)
    libs, codes = check_libraries(adata, library_key)
    if library_id is not None and library_id not in libs:
        raise ValueError(f"library_id {library_id!r} is not in `adata.obs[{library_key!r}]` (slides: {libs}).")
    records = []
    for code, lib in enumerate(libs):
        if library_id is not None and lib != library_id:
            continue
        rows = np.flatnonzero(codes == code)
        scale = slide_scale(adata, lib, rows, xy)
        img = slide_image(adata, lib, image, downsample=size_um / out_px / scale.microns_per_pixel)
        img.close()  # only its size is needed here
        crop_px = size_um / scale.microns_per_pixel * img.scalef
        pix = xy[rows] * img.scalef
        height, width = img.shape
        n_outside = int(
            np.count_nonzero((pix < -0.5).any(axis=1) | (pix[:, 0] > width - 0.5) | (pix[:, 1] > height - 0.5))
        )
        if n_outside:
            logger.warning(
                f"patch_scale: {n_outside} spots of slide {lib!r} lie outside its {img.name} image; "
                "extract_patches will refuse them (check the scale factors)."
            )
        records.append(
            {
                "library_id": lib,
                "image": img.name,
                "level": -1 if img.level is None else img.level,
                "image_height": img.shape[0],
                "image_width": img.shape[1],
                "scalef": img.scalef,
                "microns_per_pixel": scale.microns_per_pixel,
                "mpp_source": scale.source,
                "image_microns_per_pixel": scale.microns_per_pixel / img.scalef,
                "crop_px": crop_px,
                "zoom": out_px / crop_px,
                "n_spots": len(rows),
                "n_outside": n_outside,
            }
        )
    return pd.DataFrame.from_records(records).set_index("library_id")


def is_he_image(metadata: dict | None) -> bool:
    """Whether a slide's image is H&E: yes unless ``metadata['image_type']`` names another stain (e.g. DAPI).

    Single-cell platforms record fluorescence images (Xenium's DAPI morphology image); the model's image encoder was
    pretrained on H&E and must not read them as such.
    """
    kind = str((metadata or {}).get("image_type") or "H&E").strip().lower()
    return kind.startswith(("h&e", "he ", "hematoxylin", "haematoxylin"))
