"""Building blocks of the transformer backbones (DiT, HDiT, U-ViT): patching, positions,
blocks and the shared conditioning embedding."""

from medgen.models.networks.transformer.base import PatchTransformer
from medgen.models.networks.transformer.blocks import (
    Attention,
    DiTBlock,
    FinalLayer,
    Mlp,
    ViTBlock,
)
from medgen.models.networks.transformer.conditioning import ConditionEmbedding
from medgen.models.networks.transformer.patch import (
    PatchEmbed,
    merge_tokens,
    split_tokens,
    unpatchify,
)
from medgen.models.networks.transformer.position import (
    sincos_position_embedding,
    timestep_features,
)

__all__ = [
    "Attention",
    "ConditionEmbedding",
    "DiTBlock",
    "FinalLayer",
    "Mlp",
    "PatchEmbed",
    "PatchTransformer",
    "ViTBlock",
    "merge_tokens",
    "sincos_position_embedding",
    "split_tokens",
    "timestep_features",
    "unpatchify",
]
