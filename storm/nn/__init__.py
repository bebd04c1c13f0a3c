"""Pure-torch building blocks of STORM (no AnnData; tensors in, tensors out).

Imports only torch (timm and novae are optional and imported lazily), so it runs on GPU nodes with a minimal
environment. The user-facing model that connects these modules to AnnData lives in :mod:`storm.models`.
"""

from ._alibi import alibi_slopes, attention_mask, spatial_alibi_bias
from ._attention import FeedForward, SelfAttention, TransformerBlock
from ._augment import augment_patches, hed_jitter
from ._batch import BatchKeys
from ._config import StormNetConfig
from ._contrastive import (
    NicheContrastiveLoss,
    batch_window_views,
    drop_genes,
    drop_positions,
    info_nce_loss,
    sample_neighbours,
)
from ._decoders import TokenDecoder
from ._efficientnet import EFFICIENTNET_LITE_VARIANTS, EfficientNetLite, EfficientNetLiteEncoder
from ._efficientnet_weights import PRETRAINED_EFFICIENTNET, load_imagenet_weights, pretrained_weights
from ._ema import EMATeacher
from ._expression_encoder import ExpressionEncoder, RawExpressionEncoder, broadcast_gene_mask
from ._heads import ExpressionHead, SavedHead, fit_expression_head, l1_l2_loss, predict_with_head
from ._image_encoders import HE_MEAN, HE_STD, ConvImageEncoder, ImageEncoder, to_unit_float
from ._llrd import layerwise_lr_groups, parameter_layer_ids
from ._losses import masked_expression_loss, token_regression_loss
from ._masking import sample_modality_drop, sample_position_mask
from ._multiway import MultiwayBlock, apply_per_segment
from ._novae import NovaeExpressionEncoder
from ._pretrain_model import PRETRAINING_ONLY_PREFIXES, StormPretrainModel
from ._prototype import NichePrototypeLoss, sinkhorn_codes
from ._slide_model import (
    SLIDE_MODALITIES,
    AttentionPool,
    CrossAttention,
    CrossModalFusion,
    IntegratedGradients,
    PerceiverCompressor,
    SlideModelConfig,
    SlideRiskModel,
    SlideRiskOutput,
    cox_partial_likelihood_loss,
    integrated_gradients,
)
from ._spatial_encoder import MODALITIES, SpatialEncoder, SpatialEncoderOutput, centre_embedding
from ._spatial_head import SlideTensors, SpatialExpressionHead, fit_spatial_head, image_only_encoder
from ._stain_features import RGB_FROM_HED, StainTextureFeaturizer, rgb_to_hed
from ._timm_encoder import KNOWN_TIMM_KWARGS, TimmImageEncoder, WeightsUnavailableError

__all__ = [
    "EFFICIENTNET_LITE_VARIANTS",
    "HE_MEAN",
    "HE_STD",
    "KNOWN_TIMM_KWARGS",
    "MODALITIES",
    "PRETRAINED_EFFICIENTNET",
    "PRETRAINING_ONLY_PREFIXES",
    "RGB_FROM_HED",
    "SLIDE_MODALITIES",
    "AttentionPool",
    "BatchKeys",
    "ConvImageEncoder",
    "CrossAttention",
    "CrossModalFusion",
    "EMATeacher",
    "EfficientNetLite",
    "EfficientNetLiteEncoder",
    "ExpressionEncoder",
    "ExpressionHead",
    "FeedForward",
    "ImageEncoder",
    "IntegratedGradients",
    "MultiwayBlock",
    "NicheContrastiveLoss",
    "NichePrototypeLoss",
    "NovaeExpressionEncoder",
    "PerceiverCompressor",
    "RawExpressionEncoder",
    "SavedHead",
    "SelfAttention",
    "SlideModelConfig",
    "SlideRiskModel",
    "SlideRiskOutput",
    "SlideTensors",
    "SpatialEncoder",
    "SpatialEncoderOutput",
    "SpatialExpressionHead",
    "StainTextureFeaturizer",
    "StormNetConfig",
    "StormPretrainModel",
    "TimmImageEncoder",
    "TokenDecoder",
    "TransformerBlock",
    "WeightsUnavailableError",
    "alibi_slopes",
    "apply_per_segment",
    "attention_mask",
    "augment_patches",
    "batch_window_views",
    "broadcast_gene_mask",
    "centre_embedding",
    "cox_partial_likelihood_loss",
    "drop_genes",
    "drop_positions",
    "fit_expression_head",
    "fit_spatial_head",
    "hed_jitter",
    "image_only_encoder",
    "info_nce_loss",
    "integrated_gradients",
    "l1_l2_loss",
    "layerwise_lr_groups",
    "load_imagenet_weights",
    "masked_expression_loss",
    "parameter_layer_ids",
    "predict_with_head",
    "pretrained_weights",
    "rgb_to_hed",
    "sample_modality_drop",
    "sample_neighbours",
    "sample_position_mask",
    "sinkhorn_codes",
    "spatial_alibi_bias",
    "to_unit_float",
    "token_regression_loss",
]
