"""The ``task:`` section of ``task.kind: autoencoder``: network, discriminator, losses, phases.

``network.kind`` picks a :mod:`medgen.models.autoencoders` network (``kl``, ``vq``, ``dcae``
by ``variant`` plus overrides, ``maisi`` optionally from a local ``weights`` file);
``discriminator.kind`` a MONAI patch discriminator (``patch``, ``multiscale``) or ``none``.
``loss`` weighs reconstruction (L1 / L2), KL (optionally annealed linearly over
``kl_anneal_steps``), VQ, perceptual (from a LOCAL ``perceptual_weights`` file) and adversarial
terms (hinge or least squares, optionally Esser et al.'s adaptive weight). The GAN (the
discriminator's objective and the generator's adversarial term) acts from update
``gan_start`` on (0-based, as the engine counts: a run of ``gan_start`` steps never trains the
discriminator). ``phase: 3`` is DC-AE's GAN fine-tuning of the decoder head alone, encoder and
the rest of the decoder frozen, from the weights of a trained run (``init``).
``seg_mode``: a mask autoencoder (BCE + Dice + boundary loss, Dice / IoU metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

from torch import nn

from medgen.models.autoencoders.dcae import DCAE_VARIANTS, DCAutoencoder
from medgen.models.autoencoders.kl import KLAutoencoder
from medgen.models.autoencoders.maisi import MaisiAutoencoder
from medgen.models.autoencoders.vq import VQAutoencoder
from medgen.train.config.schema import Kinded, setting
from medgen.train.errors import ConfigError


@dataclass(frozen=True)
class KLNetworkConfig:
    """MONAI's AutoencoderKL (``medgen.models.autoencoders.KLAutoencoder``)."""

    kind: str = "kl"
    channels: tuple[int, ...] = setting((32, 64, 64), min=1)  # per level; downsample 2^(n-1)
    latent_channels: int = setting(4, min=1)
    num_res_blocks: int = setting(1, min=1)
    attention_levels: tuple[bool, ...] = ()  # () = no attention at any level
    norm_num_groups: int = setting(16, min=1)
    with_nonlocal_attn: bool = False

    def validate(self) -> None:
        """Attention levels per level; widths divisible by the group count."""
        _check_levels(self.channels, self.attention_levels)
        _check_groups(self.channels, self.norm_num_groups)

    def build(self, spatial_dims: int, in_channels: int, structured=None) -> nn.Module:
        """The network for data of ``in_channels`` channels."""
        return KLAutoencoder(
            spatial_dims,
            in_channels,
            latent_channels=self.latent_channels,
            channels=self.channels,
            num_res_blocks=self.num_res_blocks,
            attention_levels=self.attention_levels or None,
            norm_num_groups=self.norm_num_groups,
            with_nonlocal_attn=self.with_nonlocal_attn,
        )


@dataclass(frozen=True)
class VQNetworkConfig:
    """MONAI's VQVAE (``medgen.models.autoencoders.VQAutoencoder``)."""

    kind: str = "vq"
    channels: tuple[int, ...] = setting((32, 64), min=1)  # per level; downsample 2^n
    num_res_layers: int = setting(1, min=1)
    num_res_channels: tuple[int, ...] = setting((32, 64), min=1)
    num_embeddings: int = setting(256, min=2)  # codebook size
    embedding_dim: int = setting(4, min=1)  # latent channels
    commitment_cost: float = setting(0.25, min=0)
    decay: float = setting(0.99, min=0, max=1)  # EMA codebook update (MONAI)

    def validate(self) -> None:
        """One residual width per level."""
        if len(self.num_res_channels) != len(self.channels):
            raise ConfigError(
                f"num_res_channels: {list(self.num_res_channels)} gives "
                f"{len(self.num_res_channels)} widths for {len(self.channels)} levels "
                f"(channels {list(self.channels)})"
            )

    def build(self, spatial_dims: int, in_channels: int, structured=None) -> nn.Module:
        """The network for data of ``in_channels`` channels."""
        return VQAutoencoder(
            spatial_dims,
            in_channels,
            channels=self.channels,
            num_res_layers=self.num_res_layers,
            num_res_channels=self.num_res_channels,
            num_embeddings=self.num_embeddings,
            embedding_dim=self.embedding_dim,
            commitment_cost=self.commitment_cost,
            decay=self.decay,
        )


@dataclass(frozen=True)
class DCAENetworkConfig:
    """DC-AE (Chen et al. 2024) by variant name, with optional overrides (null: the variant's)."""

    kind: str = "dcae"
    variant: str = "f32c32"
    latent_channels: int | None = setting(None, min=1)
    encoder_block_out_channels: tuple[int, ...] | None = setting(None, min=1)
    decoder_block_out_channels: tuple[int, ...] | None = setting(None, min=1)
    encoder_layers_per_block: tuple[int, ...] | None = setting(None, min=0)
    decoder_layers_per_block: tuple[int, ...] | None = setting(None, min=0)

    def validate(self) -> None:
        """The variant must exist."""
        if self.variant not in DCAE_VARIANTS:
            raise ConfigError(
                f"variant: unknown DC-AE variant {self.variant!r}; known: "
                f"{', '.join(sorted(DCAE_VARIANTS))}"
            )

    def overrides(self) -> dict:
        """The keys given (not null), as keyword arguments of ``from_variant``."""
        names = ("latent_channels", "encoder_block_out_channels", "decoder_block_out_channels",
                 "encoder_layers_per_block", "decoder_layers_per_block")  # fmt: skip
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def build(self, spatial_dims: int, in_channels: int, structured=None) -> nn.Module:
        """The variant for data of ``in_channels`` channels; ``structured``: DC-AE 1.5's
        (min_channels, channel_step)."""
        return DCAutoencoder.from_variant(
            self.variant,
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            structured_latent=structured,
            **self.overrides(),
        )


@dataclass(frozen=True)
class MaisiNetworkConfig:
    """MAISI's 3D autoencoder (4 latent channels, 4x), optionally starting from local weights."""

    kind: str = "maisi"
    weights: str = ""  # a local MAISI autoencoder file to start from ("" = random init)
    num_splits: int = setting(1, min=1)  # MAISI's split convolutions (memory, same result)
    num_channels: tuple[int, ...] | None = setting(None, min=1)  # null: MAISI's (64, 128, 256)
    norm_num_groups: int | None = setting(None, min=1)  # null: MAISI's 32

    def build(self, spatial_dims: int, in_channels: int, structured=None) -> nn.Module:
        """MAISI's architecture (random weights; :attr:`weights` are loaded by the task)."""
        if spatial_dims != 3:
            raise ValueError(f"MAISI's autoencoder is 3D only; the data are {spatial_dims}D "
                             "(use network.kind kl for slices)")  # fmt: skip
        extra = {"num_channels": self.num_channels, "norm_num_groups": self.norm_num_groups}
        extra = {k: v for k, v in extra.items() if v is not None}
        if "num_channels" in extra:
            extra["num_res_blocks"] = (2,) * len(extra["num_channels"])
            extra["attention_levels"] = (False,) * len(extra["num_channels"])
        return MaisiAutoencoder(in_channels=in_channels, out_channels=in_channels,
                                num_splits=self.num_splits, **extra)  # fmt: skip


NETWORKS = {"kl": KLNetworkConfig, "vq": VQNetworkConfig, "dcae": DCAENetworkConfig}
NETWORKS["maisi"] = MaisiNetworkConfig


@dataclass(frozen=True)
class PatchDiscriminatorConfig:
    """MONAI's PatchDiscriminator (PatchGAN)."""

    kind: str = "patch"
    channels: int = setting(32, min=1)  # width of the first layer (doubling per layer)
    num_layers: int = setting(3, min=1)


@dataclass(frozen=True)
class MultiScaleDiscriminatorConfig:
    """MONAI's MultiScalePatchDiscriminator: ``num_scales`` patch discriminators, each on a
    2x smaller input than the previous."""

    kind: str = "multiscale"
    channels: int = setting(32, min=1)
    num_layers: int = setting(3, min=1)
    num_scales: int = setting(2, min=1)


@dataclass(frozen=True)
class NoDiscriminatorConfig:
    """No GAN."""

    kind: str = "none"


DISCRIMINATORS = {
    "patch": PatchDiscriminatorConfig,
    "multiscale": MultiScaleDiscriminatorConfig,
    "none": NoDiscriminatorConfig,
}


@dataclass(frozen=True)
class AutoencoderLossConfig:
    """Weights of the generator's loss terms."""

    reconstruction: str = setting("l1", choices=("l1", "l2"))
    kl_weight: float = setting(1e-6, min=0)  # KL-VAE only
    kl_anneal_steps: int = setting(0, min=0)  # > 0: kl_weight * min(1, step / kl_anneal_steps)
    vq_weight: float = setting(1.0, min=0)  # VQ-VAE only
    perceptual_weight: float = setting(0.0, min=0)
    perceptual_weights: str = ""  # local VGG16 weights (torchvision layout), needed if weight > 0
    perceptual_heads: str = ""  # optional local LPIPS linear heads (lpips' vgg.pth)
    perceptual_fraction: float = setting(0.25, gt=0, max=1)  # 3D: slices per plane (2.5D)
    adv_weight: float = setting(0.01, min=0)
    adversarial: str = setting("hinge", choices=("hinge", "least_squares"))
    adaptive_gan_weight: bool = False  # Esser et al.: ||grad rec|| / ||grad adv|| at the head
    bce_weight: float = setting(1.0, min=0)  # seg_mode
    dice_weight: float = setting(1.0, min=0)  # seg_mode
    boundary_weight: float = setting(0.1, min=0)  # seg_mode

    def validate(self) -> None:
        """Perceptual weights named when the perceptual term is on."""
        if self.perceptual_weight > 0 and not self.perceptual_weights:
            raise ConfigError(
                f"perceptual_weights: perceptual_weight is {self.perceptual_weight}, so name a "
                "local backbone weights file (e.g. torchvision's vgg16 .pth), or set "
                "task.loss.perceptual_weight=0"
            )


@dataclass(frozen=True)
class StructuredLatentConfig:
    """DC-AE 1.5's structured latent: per sample, channels from a drawn count on are zeroed."""

    min_channels: int = setting(16, min=1)
    channel_step: int = setting(4, min=1)


@dataclass(frozen=True)
class AutoencoderConfig:
    """An autoencoder of the cache's images (or masks), 2D slices or 3D volumes."""

    kind: str = "autoencoder"
    channels: tuple[str, ...] = ("image",)  # image (every modality), modality names, mask
    network: Annotated[Any, Kinded(NETWORKS, "kl")] = field(default_factory=KLNetworkConfig)
    discriminator: Annotated[Any, Kinded(DISCRIMINATORS, "patch")] = field(
        default_factory=PatchDiscriminatorConfig
    )
    loss: AutoencoderLossConfig = field(default_factory=AutoencoderLossConfig)
    gan_start: int = setting(0, min=0)  # the update (0-based) the GAN switches on at
    phase: int = setting(1, choices=(1, 3))  # 3: GAN fine-tuning of the decoder head only
    init: str = ""  # an autoencoder run directory whose weights this run starts from
    init_checkpoint: str = "best"  # latest | best | step_N of init
    structured_latent: StructuredLatentConfig | None = None  # DC-AE 1.5 (dcae only)
    seg_mode: bool = False  # a mask autoencoder: channels [mask], BCE + Dice + boundary
    eval_samples: int = setting(64, min=1)  # held-out items scored at every evaluation
    eval_images: int = setting(4, min=1)  # items shown in the reconstruction figure

    # what `medgen-train sample` says instead of sampling such a run
    instead_of_sample: ClassVar[str] = (
        "an autoencoder reconstructs, it does not sample: encode a cache with it "
        "(medgen-train encode RUN_DIR --cache CACHE --out LATENTS) and train a latent "
        "diffusion model on that (task.space.kind=latent)"
    )

    def validate(self) -> None:
        """Rules between the keys (the data-dependent ones are checked at build time)."""
        if not self.channels:
            raise ConfigError("channels: name at least one channel to autoencode")
        if len(set(self.channels)) != len(self.channels):
            raise ConfigError(f"channels: duplicate names in {list(self.channels)}")
        gan = self.discriminator.kind != "none"
        if self.seg_mode and tuple(self.channels) != ("mask",):
            raise ConfigError(
                f"seg_mode: a mask autoencoder encodes the mask alone; set task.channels=[mask] "
                f"(got {list(self.channels)})"
            )
        if self.seg_mode and self.loss.perceptual_weight > 0:
            raise ConfigError("seg_mode: the perceptual loss is for images; set "
                              "task.loss.perceptual_weight=0")  # fmt: skip
        if gan and self.loss.adv_weight == 0:
            raise ConfigError(
                f"loss.adv_weight: 0 with a {self.discriminator.kind!r} discriminator trains a "
                "discriminator nobody uses; set task.discriminator.kind=none or adv_weight > 0"
            )
        if self.phase == 3:
            if not gan:
                raise ConfigError("phase: 3 is GAN fine-tuning of the decoder head; it needs a "
                                  "discriminator (task.discriminator.kind=patch)")  # fmt: skip
            if not self.init and not getattr(self.network, "weights", ""):
                raise ConfigError(
                    "phase: 3 fine-tunes the decoder head of a trained autoencoder; name its run "
                    "with task.init=RUN_DIR (a phase-1 run of the same network)"
                )
        if self.structured_latent is not None:
            if self.network.kind != "dcae":
                raise ConfigError(
                    f"structured_latent: DC-AE 1.5's structured latent applies to "
                    f"network.kind dcae, not {self.network.kind!r}"
                )
        if self.network.kind == "maisi" and self.network.weights and self.init:
            raise ConfigError("init: give task.init or task.network.weights, not both")


def _check_levels(channels: tuple[int, ...], attention: tuple[bool, ...]) -> None:
    if attention and len(attention) != len(channels):
        raise ConfigError(
            f"attention_levels: {list(attention)} has {len(attention)} entries for "
            f"{len(channels)} levels (channels {list(channels)})"
        )


def _check_groups(channels: tuple[int, ...], groups: int) -> None:
    bad = [c for c in channels if c % groups]
    if bad:
        raise ConfigError(
            f"norm_num_groups: {groups} does not divide the widths {bad} of channels "
            f"{list(channels)}"
        )
