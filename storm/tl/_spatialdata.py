"""SpatialData as input of ``storm.tl``: the table in storm's layout, the image element placed by its transformation.

A :class:`spatialdata.SpatialData` holds the spots as a table (an AnnData annotating a shapes element, e.g. the
Visium circles of ``spatialdata-io``) and the H&E as an image element; each element carries its transformation to a
coordinate system. :func:`table_view` gives the tools an AnnData of the table whose slide record
(``uns['spatial']``, DEVELOPERS.md) holds the image element, scaled and shifted so that the table's coordinates index
its pixels; the tools run on it unchanged, and :func:`write_back` copies what they added into the table. spatialdata
is imported only when a SpatialData is passed (``pip install 'storm-st[spatialdata]'``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from storm._logging import logger


def is_spatialdata(obj: Any) -> bool:
    """Whether ``obj`` is a :class:`spatialdata.SpatialData` (without importing spatialdata)."""
    return type(obj).__name__ == "SpatialData" and type(obj).__module__.split(".")[0] == "spatialdata"


def _one(elements: Any, key: str | None, what: str, argument: str) -> str:
    names = list(elements)
    if key is None:
        if len(names) != 1:
            where = f"{len(names)} {what}s ({names[:5]})" if names else f"no {what}"
            raise ValueError(
                f"The SpatialData has {where}: pass {argument}= to say which one"
                f"{'' if names else f' (add the {what} first)'}."
            )
        return names[0]
    if key not in elements:
        raise ValueError(f"{argument}={key!r} is not a {what} of the SpatialData ({names[:5]}).")
    return key


def table_of(sdata: Any, table_key: str | None) -> AnnData:
    """Return the table ``table_key`` of ``sdata`` (default: the only one) itself, not a copy."""
    return sdata.tables[_one(sdata.tables, table_key, "table", "table_key")]


def _affine(element: Any, coordinate_system: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    transform = get_transformation(element, to_coordinate_system=coordinate_system)
    return np.asarray(transform.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=np.float64)


def _rgb_level(image: Any) -> Any:
    """Return the full-resolution level of an image element as a lazy (y, x, c) uint8 dask array."""
    from spatialdata import get_pyramid_levels

    level = get_pyramid_levels(image, n=0) if not hasattr(image, "dims") else image
    level = level.transpose("y", "x", "c")
    if level.sizes["c"] != 3 or level.dtype != np.uint8:
        raise ValueError(
            f"The image element must be an RGB H&E (3 uint8 channels), got {level.sizes['c']} channels of "
            f"{level.dtype}."
        )
    return level.data


def table_view(
    sdata: Any,
    *,
    table_key: str | None = None,
    image_key: str | None = None,
    coordinate_system: str | None = None,
    need_image: bool = True,
    lazy_image: bool = False,
) -> tuple[AnnData, str, dict[str, Any]]:
    """Return an AnnData of the table in storm's layout, with the image element as its slide's image.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData`.
    table_key, image_key
        Which table and image element (default: the only one).
    coordinate_system
        The coordinate system in which the table's region element and the image are aligned (default: the first one
        they share).
    need_image
        Raise when there is no image element (else the view carries none).
    lazy_image
        Keep the image a lazy (dask) array in ``info['image']`` instead of reading it into ``images['hires']``.

    Returns
    -------
    tuple
        The AnnData (a copy of the table), the table's key, and ``info``: ``image_key``, ``coordinate_system``,
        ``scalef`` (image px per table coordinate unit), ``offset`` (table units added to the coordinates),
        ``image`` (the lazy array) and ``transformations`` (the image's).

    Raises
    ------
    ValueError
        No table, no image (where needed), no slide record in the table, no shared coordinate system, or a
        rotation between table and image.
    """
    table_key = _one(sdata.tables, table_key, "table", "table_key")
    table = sdata.tables[table_key]
    spatial = table.uns.get("spatial") or {}
    if "spatial" not in table.obsm:
        raise ValueError(f"The table {table_key!r} has no obsm['spatial'] (the spots' coordinates).")
    if len(spatial) != 1:
        raise ValueError(
            f"The table {table_key!r} must describe one slide in uns['spatial'] (platform and µm per coordinate unit),"
            f" found {len(spatial)}: declare it with storm.pp.set_slide(sdata.tables[{table_key!r}], platform=..., "
            "microns_per_pixel=...)."
        )
    work = table.copy()
    work.uns.pop("spatialdata_attrs", None)
    info: dict[str, Any] = {"image_key": None}
    if not sdata.images:
        if need_image:
            raise ValueError(
                "The SpatialData has no image element: add the H&E with Image2DModel, or embed with mode='expression'."
            )
        return work, table_key, info
    image_key = _one(sdata.images, image_key, "image element", "image_key")
    image = sdata.images[image_key]
    from spatialdata.transformations import get_transformation

    attrs = table.uns.get("spatialdata_attrs") or {}
    regions = attrs.get("region")
    region = regions if isinstance(regions, str) else None
    region_element = sdata.shapes.get(region) if region is not None else None
    image_systems = list(get_transformation(image, get_all=True))
    table_systems = list(get_transformation(region_element, get_all=True)) if region_element is not None else None
    shared = [c for c in image_systems if table_systems is None or c in table_systems]
    if coordinate_system is None:
        if not shared:
            raise ValueError(
                f"The image {image_key!r} and the table's region {region!r} share no coordinate system "
                f"({image_systems} vs {table_systems})."
            )
        coordinate_system = shared[0]
    elif coordinate_system not in shared:
        raise ValueError(f"coordinate_system={coordinate_system!r} is not shared by the image and the table: {shared}.")
    table_to_cs = _affine(region_element, coordinate_system) if region_element is not None else np.eye(3)
    to_image = np.linalg.inv(_affine(image, coordinate_system)) @ table_to_cs
    linear = to_image[:2, :2]
    scalef = float(linear[0, 0])
    if not np.allclose(linear, np.diag([scalef, scalef]), rtol=1e-9, atol=1e-12) or scalef <= 0:
        raise ValueError(
            f"The table's coordinates map to the image's pixels by {linear.tolist()}: storm reads images aligned by a "
            "uniform scale and a shift only; resample the image with spatialdata.transform first."
        )
    offset = to_image[:2, 2] / scalef  # image px = scalef · (table xy + offset)
    pixels = _rgb_level(image)
    lib = next(iter(spatial))
    entry = {**spatial[lib]}
    entry["metadata"] = {k: v for k, v in (entry.get("metadata") or {}).items() if k != "fullres_path"}
    entry["metadata"]["source"] = f"SpatialData image element {image_key!r}"
    entry["scalefactors"] = {**(entry.get("scalefactors") or {}), "tissue_hires_scalef": scalef}
    entry["images"] = {} if lazy_image else {"hires": np.asarray(pixels)}
    work.uns["spatial"] = {lib: entry}
    if np.any(offset != 0):
        work.obsm["spatial"] = np.asarray(work.obsm["spatial"], dtype=np.float64) + offset
    info.update(
        image_key=image_key,
        coordinate_system=coordinate_system,
        scalef=scalef,
        offset=offset,
        image=pixels,
        library_id=lib,
        transformations=get_transformation(image, get_all=True),
    )
    logger.info(
        f"SpatialData: table {table_key!r} over image {image_key!r} ({pixels.shape[1]}×{pixels.shape[0]} px, "
        f"{scalef:g} px per coordinate unit, coordinate system {coordinate_system!r})"
    )
    return work, table_key, info


def write_back(sdata: Any, table_key: str, work: AnnData, *, obs=(), obsm=(), uns=()) -> None:
    """Copy the results the tool wrote into ``work`` (the keys named, where present) into the SpatialData's table."""
    table = sdata.tables[table_key]
    for attr, keys in (("obs", obs), ("obsm", obsm), ("uns", uns)):
        source, target = getattr(work, attr), getattr(table, attr)
        for key in keys:
            if key in source:
                target[key] = source[key]
                logger.info(f"Adding `sdata.tables[{table_key!r}].{attr}[{key!r}]`")


def add_tiles(sdata: Any, tiles: AnnData, info: dict[str, Any], key_added: str) -> None:
    """Add the tiles of :func:`storm.tl.virtual_st` as a table ``key_added`` annotating circles ``{key_added}_tiles``.

    The circles sit at the tile centres in the image's pixels, with the image's transformations, so the tiles
    overlay the H&E in every coordinate system of the image (spatialdata-plot).
    """
    import geopandas as gpd
    from shapely import points
    from spatialdata.models import ShapesModel, TableModel

    xy = np.asarray(tiles.obsm["spatial"], dtype=np.float64)
    side = float(tiles.uns["spatial"][next(iter(tiles.uns["spatial"]))]["scalefactors"]["spot_diameter_fullres"])
    circles = gpd.GeoDataFrame({"radius": np.full(len(xy), side / 2)}, geometry=points(xy), index=np.arange(len(xy)))
    shapes = ShapesModel.parse(circles, transformations=dict(info["transformations"]))
    region = f"{key_added}_tiles"  # element names are unique across element types
    table = tiles.copy()
    table.obs["region"] = pd.Categorical([region] * table.n_obs)
    table.obs["instance_id"] = np.arange(table.n_obs)
    sdata.shapes[region] = shapes
    sdata.tables[key_added] = TableModel.parse(table, region=region, region_key="region", instance_key="instance_id")
    logger.info(f"Adding `sdata.shapes[{region!r}]` and `sdata.tables[{key_added!r}]` ({tiles.n_obs:,} tiles)")


def run_on_table(
    tool: Any,
    sdata: Any,
    *args: Any,
    table_key: str | None,
    image_key: str | None,
    need_image: bool,
    copy: bool,
    writes: dict[str, list[str]],
    **kwargs: Any,
) -> AnnData | None:
    """Run ``tool`` (a ``storm.tl`` function) on the table of ``sdata`` and write its results back into the table.

    ``writes`` names the keys the tool adds (``{"obsm": [...], "uns": [...]}``). With ``copy=True`` the SpatialData is
    left alone and the table, with the results, is returned as a new AnnData.
    """
    work, key, _ = table_view(sdata, table_key=table_key, image_key=image_key, need_image=need_image)
    tool(work, *args, copy=False, **kwargs)
    if copy:
        return work
    write_back(sdata, key, work, **writes)
    return None


def slide_of_spatialdata(
    sdata: Any, *, table_key: str | None, image_key: str | None, microns_per_pixel: float | None, key_added: str
) -> tuple[Any, float | None, str | None, dict[str, Any]]:
    """Return the image element (lazy (y, x, c)), its µm per pixel, the slide id and :func:`table_view`'s info.

    The scale is ``microns_per_pixel`` where given, else the table's µm per coordinate unit over the image's pixels
    per unit; without a table the image is taken alone (``microns_per_pixel`` is then needed). ``key_added`` (the
    elements :func:`add_tiles` will add) must be free.
    """
    taken = [k for k in (key_added, f"{key_added}_tiles") if k in sdata]
    if taken:
        raise ValueError(f"The SpatialData already has an element {taken[0]!r}: pass another key_added=.")
    if sdata.tables:
        _, _, info = table_view(sdata, table_key=table_key, image_key=image_key, lazy_image=True)
        entry = next(iter(table_of(sdata, table_key).uns["spatial"].values()))
        table_mpp = (entry.get("scalefactors") or {}).get("microns_per_pixel")
        if microns_per_pixel is None and table_mpp is not None:
            microns_per_pixel = float(table_mpp) / info["scalef"]
        return info["image"], microns_per_pixel, info["library_id"], info
    from spatialdata.transformations import get_transformation

    image_key = _one(sdata.images, image_key, "image element", "image_key")
    image = sdata.images[image_key]
    info = {"image_key": image_key, "transformations": get_transformation(image, get_all=True)}
    return _rgb_level(image), microns_per_pixel, None, info
