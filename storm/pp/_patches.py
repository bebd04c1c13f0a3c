"""H&E patches of a fixed physical size (µm) centred on each spot, streamed in batches."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from anndata import AnnData

from storm._logging import logger
from storm._patch_geometry import crop_resize

from ._scale import SlideImage, slide_image, slide_scale
from ._validate import check_coordinates_in_image, check_libraries, check_positive, check_spatial


def _stream(
    rows: np.ndarray,
    codes: np.ndarray,
    centres: np.ndarray,
    sides: np.ndarray,
    images: dict[int, SlideImage],
    out_px: int,
    batch_size: int,
) -> Iterator[np.ndarray]:
    # Each slide's image is decoded once, on its first spot, and dropped after its last one: with slides stored one
    # after another (the usual case) only one full-resolution image is in memory at a time. A whole-slide image is
    # never decoded: each patch reads the tiles under it, at the pyramid level chosen for the patch size.
    last = {code: int(np.flatnonzero(codes[rows] == code).max()) for code in images}
    arrays: dict[int, np.ndarray] = {}
    for start in range(0, len(rows), batch_size):
        stop = min(start + batch_size, len(rows))
        batch = np.empty((stop - start, out_px, out_px, 3), dtype=np.uint8)
        for j, row in enumerate(rows[start:stop]):
            code = int(codes[row])
            if code not in arrays:
                arrays[code] = images[code].array()
            cx, cy = centres[row]
            batch[j] = crop_resize(arrays[code], cx, cy, sides[code], out_px)
        for code in [c for c in arrays if last[c] < stop]:
            del arrays[code]
            images[code].close()
        yield batch


def extract_patches(
    adata: AnnData,
    *,
    size_um: float = 55.0,
    out_px: int = 224,
    batch_size: int = 256,
    library_id: str | None = None,
    image: str = "auto",
    library_key: str = "library_id",
) -> Iterator[np.ndarray]:
    """Stream square H&E patches of ``size_um`` µm centred on each spot, resized to ``out_px`` pixels.

    Everything is checked when the function is called (only image headers are read); pixels are decoded when the
    returned iterator is first advanced, once per slide, and patches are cut batch by batch, so memory holds one
    slide image and one batch, never all patches.

    Scale: µm per full-resolution pixel as :func:`storm.pp.patch_scale` reports it (``microns_per_pixel``, else a fit
    of the 100 µm / 200 µm spot pitch of Visium / legacy ST, else Visium's ``65 / spot_diameter_fullres``, 10x's
    "theoretical 65 µm spot": Space Ranger's diameter is not the 55 µm capture area); the crop side in the chosen
    image is ``size_um / microns_per_pixel * scalef``. A spot's centre in that image is ``obsm['spatial'] * scalef``,
    read as a pixel index (pixel centres at integers, as scanpy and squidpy plot them); the square is cut at sub-pixel
    precision. Where it reaches past the image border it is padded with white (255), the colour of bare glass.
    Resampling is PIL bilinear, which PIL antialiases when shrinking. On a low-resolution image (e.g. DLPFC's 600-px
    image, ~4 px per 55 µm) the patch is a blurred upsampling: fine for context, not for morphology;
    :func:`storm.pp.patch_scale` reports the ``zoom``.

    Parameters
    ----------
    adata
        Spots with ``obsm['spatial']`` = (x, y) in full-resolution pixels, ``obs[library_key]`` and
        ``uns['spatial'][library_id]`` (scale factors and images, see DEVELOPERS.md).
    size_um
        Side of the tissue square in µm (the paper: 55 µm, one Visium spot).
    out_px
        Side of each returned patch in pixels.
    batch_size
        Patches per yielded array (the last one may be smaller).
    library_id
        Only the spots of this slide; default: all spots.
    image
        Which image to cut from. ``"auto"``: the full-resolution file ``metadata['fullres_path']`` when recorded
        (opened with :class:`storm.io.LazyImage`, or for a whole-slide image such as :func:`storm.io.read_wsi` records,
        read tile by tile from the pyramid level nearest ``size_um / out_px`` µm per pixel), else ``images['hires']``,
        else ``images['lowres']``. Or name one: ``"fullres"``, ``"hires"``, ``"lowres"``.
    library_key
        Column of ``adata.obs`` that names each spot's slide.

    Yields
    ------
    numpy.ndarray
        uint8 arrays of shape (batch, out_px, out_px, 3), RGB. Concatenated, they hold one patch per spot in
        ``adata.obs`` order (of the slide ``library_id`` if given). ``adata`` is not modified.

    Raises
    ------
    ValueError
        No or non-finite ``obsm['spatial']``, a slide without ``uns['spatial']`` entry, no image, no physical scale, or
        a spot centre outside its image (the message gives the count and the image size: usually a wrong scale factor).
    FileNotFoundError
        A recorded full-resolution file is missing.
    """
    check_positive(size_um, "size_um")
    check_positive(out_px, "out_px", integer=True)
    check_positive(batch_size, "batch_size", integer=True)
    out_px, batch_size = int(out_px), int(batch_size)
    xy = check_spatial(adata)
    libs, codes = check_libraries(adata, library_key)
    if library_id is not None and library_id not in libs:
        raise ValueError(f"library_id {library_id!r} is not in `adata.obs[{library_key!r}]` (slides: {libs}).")

    wanted = [c for c, lib in enumerate(libs) if library_id is None or lib == library_id]
    rows = np.flatnonzero(np.isin(codes, wanted))
    centres = np.empty_like(xy)
    sides = np.zeros(len(libs))
    images: dict[int, SlideImage] = {}
    for code in wanted:
        lib = libs[code]
        slide_rows = np.flatnonzero(codes == code)
        scale = slide_scale(adata, lib, slide_rows, xy)
        img = slide_image(adata, lib, image, downsample=size_um / out_px / scale.microns_per_pixel)
        centres[slide_rows] = img.centres(xy[slide_rows])  # continuous coordinates (pixel i spans [i, i + 1))
        check_coordinates_in_image(
            centres[slide_rows] - 0.5,
            img.shape,
            library_id=lib,
            image_name=img.name,
            obs_names=adata.obs_names[slide_rows],
        )
        sides[code] = size_um / scale.microns_per_pixel * img.scalef
        images[code] = img
        logger.info(
            f"extract_patches: slide {lib!r}: {len(slide_rows):,} spots from the {img.shape[1]}×{img.shape[0]} "
            f"{img.name} image; {scale.microns_per_pixel * 1:.3f} µm/full-res px ({scale.source}), "
            f"{size_um:g} µm = {sides[code]:.1f} px → {out_px} px"
        )
        if sides[code] < out_px / 8:
            logger.info(
                f"extract_patches: slide {lib!r}: each patch is upsampled {out_px / sides[code]:.0f}× from the "
                f"{img.name} image; morphology is coarse (use a full-resolution image where one exists)."
            )
    return _stream(rows, codes, centres, sides, images, out_px, batch_size)
