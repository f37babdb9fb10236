"""ControlNet on :class:`ConditionedUNet`: MONAI's ``ControlNet`` as a trainable copy of a
frozen base's encoder, steering the base through zero-initialised residuals.

:class:`ControlBranch` is the trained part: MONAI's ``monai.networks.nets.ControlNet`` built
with the base's widths, depth, attention and (prior-extended) input channels, initialised from
the base's encoder weights as MAISI and the ControlNet paper do (the copy is checked: every
encoder weight copied, only the zero convolutions and the conditioning embedding new), and
trainable copies of the base's token / mode / FiLM embeddings, so the branch sees the same
conditioning as the base. Its forward is MONAI's ``ControlNet.forward`` (equal outputs with
the same weights when there is no MedGen conditioning, tested) with the conditioning added to
the time embedding where :class:`ConditionedUNet` adds it; the control map arrives as
``Conditioning.control`` (B, K, *spatial) at the data's resolution and is embedded down to
the network's grid by MONAI's conditioning embedding (one stride-2 stage per halving).

:class:`ControlledUNet` is the :class:`~medgen.models.networks.Network` a sampler calls: the
branch's residuals fed into the frozen base. At initialisation the residuals are exactly zero,
so a ControlledUNet predicts what its base predicts.

Label maps with many classes enter as bit channels (:func:`label_bits`, MAISI's encoding of
up to 256 labels in 8 binary channels).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence

import torch
from monai.networks.nets import ControlNet
from torch import nn

from medgen.models.conditioning import Conditioning, concat_priors
from medgen.models.conditioning.context import as_conditioning
from medgen.models.networks.unet import ConditionedUNet, conditioned_embedding, run_block

NEW_IN_CONTROLNET = (
    "controlnet_cond_embedding.",
    "controlnet_down_blocks.",
    "controlnet_mid_block.",
)
DECODER_ONLY = ("up_blocks.", "out.")


def label_bits(labels: torch.Tensor, n_bits: int) -> torch.Tensor:
    """An integer label map (B, 1, *spatial) as ``n_bits`` channels in {-1, 1}: bit b of each
    label (MAISI encodes up to 256 labels in 8 binary channels). Labels outside
    [0, 2**n_bits) are a ValueError."""
    if n_bits < 1:
        raise ValueError(f"n_bits must be >= 1, got {n_bits}")
    labels = labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= 2**n_bits):
        raise ValueError(
            f"labels {int(labels.min())}..{int(labels.max())} do not fit in {n_bits} bits"
        )
    bits = [((labels >> b) & 1) for b in range(n_bits)]
    return torch.cat(bits, dim=1).float() * 2 - 1


def bits_for(labels: Sequence[int]) -> int:
    """How many bit channels the label values ``labels`` need (at least 1)."""
    return max(1, int(max(labels, default=1)).bit_length())


class ControlBranch(nn.Module):
    """The trainable control branch of a frozen :class:`ConditionedUNet` ``base``.

    ``control_channels``: channels of the control map; ``embedding_channels``: widths of
    MONAI's conditioning embedding, one stride-2 stage between consecutive entries, so
    ``len(embedding_channels) - 1`` halvings must bring the control map to the network's grid
    (1 entry when the network runs at the data's resolution, 2 for a space that halves it);
    ``scale``: MONAI's ``conditioning_scale``. ``copy_base``: initialise the encoder from the
    base (False: MONAI's random initialisation; the zero convolutions stay zero either way).
    ``gradient_checkpointing``: recompute each down and middle block in the backward pass
    (None: as the base is set).
    """

    def __init__(
        self,
        base: ConditionedUNet,
        control_channels: int,
        *,
        embedding_channels: Sequence[int] = (16,),
        scale: float = 1.0,
        copy_base: bool = True,
        gradient_checkpointing: bool | None = None,
    ) -> None:
        super().__init__()
        if gradient_checkpointing is None:
            gradient_checkpointing = base.gradient_checkpointing
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if control_channels < 1:
            raise ValueError(f"control_channels must be >= 1, got {control_channels}")
        if not embedding_channels or min(embedding_channels) < 1:
            raise ValueError(
                f"embedding_channels: expected positive widths, got {embedding_channels}"
            )
        net = base.net
        groups = net.down_blocks[0].resnets[0].norm1.num_groups
        self.control_channels = int(control_channels)
        self.halvings = len(embedding_channels) - 1
        self.scale = float(scale)
        self.prior_channels, self.prior_modes = base.prior_channels, base.prior_modes
        self.net = ControlNet(
            spatial_dims=net.conv_in.conv.weight.ndim - 2,
            in_channels=net.in_channels,
            num_res_blocks=net.num_res_blocks,
            channels=net.block_out_channels,
            attention_levels=net.attention_levels,
            norm_num_groups=groups,
            num_head_channels=net.num_head_channels,
            with_conditioning=net.with_conditioning,
            cross_attention_dim=_cross_attention_dim(net),
            conditioning_embedding_in_channels=self.control_channels,
            conditioning_embedding_num_channels=tuple(embedding_channels),
        )
        if copy_base:
            self.copy_encoder(base)
        self.token_embedding = copy.deepcopy(base.token_embedding)
        self.mode_embedding = copy.deepcopy(base.mode_embedding)
        self.size_film = copy.deepcopy(base.size_film)
        for p in self.parameters():
            p.requires_grad_(True)

    def copy_encoder(self, base: ConditionedUNet) -> None:
        """Load the base's encoder weights (time embedding, conv_in, down and middle blocks);
        a ValueError if anything but the ControlNet's own layers is left out or the base has
        encoder weights the branch lacks."""
        result = self.net.load_state_dict(base.net.state_dict(), strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(NEW_IN_CONTROLNET)]
        extra = [k for k in result.unexpected_keys if not k.startswith(DECODER_ONLY)]
        if missing or extra:
            raise ValueError(
                f"the base does not match its ControlNet copy: missing {missing[:3]}, "
                f"unexpected {extra[:3]}"
            )

    def check_control(self, control: torch.Tensor | None, x: torch.Tensor) -> None:
        """The control map's channels and size against ``x``; a ValueError names the mismatch."""
        if control is None:
            raise ValueError("ControlBranch needs Conditioning.control (the control map)")
        expected = tuple(s * 2**self.halvings for s in x.shape[2:])
        if control.ndim != x.ndim or control.shape[1] != self.control_channels:
            raise ValueError(
                f"control: expected (B, {self.control_channels}, *spatial), got "
                f"{tuple(control.shape)}"
            )
        if tuple(control.shape[2:]) != expected:
            raise ValueError(
                f"control: spatial size {tuple(control.shape[2:])}, expected {expected} (the "
                f"network's grid {tuple(x.shape[2:])} times 2^{self.halvings} from "
                "embedding_channels)"
            )

    def embedding(self, t: torch.Tensor, cond: Conditioning, dtype: torch.dtype) -> torch.Tensor:
        """The branch's conditioned time embedding (as :meth:`ConditionedUNet.embedding`)."""
        return conditioned_embedding(self, self.net, t, cond, dtype)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(down-block residuals, mid-block residual) for the base, scaled by :attr:`scale`."""
        cond = as_conditioning(cond)
        self.check_control(cond.control, x)
        if cond.priors is not None:
            x = concat_priors(x, cond.priors, self.prior_modes, self.prior_channels)
        net = self.net
        emb = self.embedding(torch.as_tensor(t, device=x.device).reshape(-1), cond, x.dtype)
        context = cond.context
        h = net.conv_in(x) + net.controlnet_cond_embedding(cond.control.to(x.dtype))
        residuals = [h]
        ckpt = self.gradient_checkpointing
        for block in net.down_blocks:
            h, res = run_block(ckpt, block, hidden_states=h, temb=emb, context=context)
            residuals.extend(res)
        h = run_block(ckpt, net.middle_block, hidden_states=h, temb=emb, context=context)
        down = [
            blk(r) * self.scale
            for r, blk in zip(residuals, net.controlnet_down_blocks, strict=True)
        ]
        return down, net.controlnet_mid_block(h) * self.scale


class ControlledUNet(nn.Module):
    """A frozen :class:`ConditionedUNet` steered by a :class:`ControlBranch`; follows the
    :class:`~medgen.models.networks.Network` protocol, the control map in
    ``Conditioning.control``."""

    def __init__(self, base: ConditionedUNet, branch: ControlBranch) -> None:
        super().__init__()
        self.base, self.branch = base, branch

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        """The base's prediction with the branch's residuals added."""
        return self.forward_with(self.branch, x, t, cond)

    def forward_with(self, branch: Callable, x: torch.Tensor, t: torch.Tensor, cond=None):
        """As :meth:`forward`, with ``branch`` called in place of :attr:`branch` (a DDP or
        compile wrapper of it, so training syncs its gradients)."""
        cond = as_conditioning(cond)
        down, mid = branch(x, t, cond)
        return self.base(
            x,
            t,
            dataclasses.replace(cond, control=None),
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        )


def _cross_attention_dim(net) -> int | None:
    if not net.with_conditioning:
        return None
    for module in net.modules():
        dim = getattr(module, "cross_attention_dim", None)
        if isinstance(dim, int):
            return dim
    for module in net.modules():  # MONAI's CrossAttentionBlock keeps only the projection
        if hasattr(module, "to_k") and isinstance(module.to_k, nn.Linear):
            return module.to_k.in_features
    raise ValueError("cannot tell the base's cross_attention_dim")
