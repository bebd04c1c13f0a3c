"""Names of the tensors in a batch of windows (the contract between the data modules and the network)."""

from __future__ import annotations

__all__ = ["BatchKeys"]


class BatchKeys:
    """Keys of the batch dict consumed by :class:`~storm.nn.StormPretrainModel`.

    A batch holds ``B`` windows of ``W`` positions (position 0 = centre spot) over the union gene list of ``G``.

    Attributes
    ----------
    IMAGE
        ``(B, W, 3, H, H)`` uint8 (or float in [0, 1]) RGB patches, or ``(B, W, D_img)`` precomputed features.
        Absent or ``None``: no image in this batch.
    EXPR
        ``(B, W, G)`` float normalised log expression. Absent or ``None``: no expression in this batch.
    GENE_MASK
        ``(B, G)`` or ``(B, W, G)`` bool: genes measured in the sample's panel (default: all).
    OFFSETS
        ``(B, W, 2)`` float: position minus centre position, in µm.
    POS_MASK
        ``(B, W)`` bool: valid, non-padded positions (default: all).
    HAS_IMAGE, HAS_EXPR
        ``(B,)`` or ``(B, W)`` bool: whether the modality exists for the window (e.g. a slide without an image in
        a mixed batch). Default: all ``True`` when the modality's tensor is in the batch.
    """

    IMAGE = "image"
    EXPR = "expr"
    GENE_MASK = "gene_mask"
    OFFSETS = "offsets_um"
    POS_MASK = "pos_mask"
    HAS_IMAGE = "has_image"
    HAS_EXPR = "has_expr"
