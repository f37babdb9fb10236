"""Conditioning for diffusion networks: tokens, modes, FiLM size bins, concatenated priors."""

from medgen.models.conditioning.context import Conditioning
from medgen.models.conditioning.film import FiLM
from medgen.models.conditioning.mode import ModeEmbedding
from medgen.models.conditioning.priors import concat_priors, resize_prior
from medgen.models.conditioning.tokens import (
    TokenEmbedding,
    validate_token_count,
    zbin_class_token,
)

__all__ = [
    "Conditioning",
    "FiLM",
    "ModeEmbedding",
    "TokenEmbedding",
    "concat_priors",
    "resize_prior",
    "validate_token_count",
    "zbin_class_token",
]
