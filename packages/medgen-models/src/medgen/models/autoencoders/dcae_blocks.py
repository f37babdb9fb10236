"""DC-AE building blocks (Chen et al. 2024, arXiv 2410.10733), generic over 2D and 3D.

The blocks of diffusers' ``AutoencoderDC`` written once for ``spatial_dims`` 2 or 3, with the
same sub-module and parameter names, so a diffusers state dict loads into the 2D model as is:

- :func:`pixel_unshuffle` / :func:`pixel_shuffle`: space-to-channel and back with a factor per
  spatial axis; in 2D with equal factors they equal ``torch.nn.functional.pixel_(un)shuffle``
  (channel index ``c * prod(f) + offset``, the offset raveled over the axes in order);
- :class:`ResBlock`: conv - act - conv - norm + identity;
- :class:`EfficientViTBlock`: multi-scale ReLU linear attention (:class:`LiteMLA`) then a
  gated inverted-bottleneck conv (:class:`GLUMBConv`), each with a residual;
- :class:`DownBlock` / :class:`UpBlock`: a 2x (per axis) resampling conv plus DC-AE's
  residual space-to-channel shortcut (channel averaging down, channel duplication up);
- :class:`ChannelRMSNorm`: RMSNorm over the channel axis with a weight and a bias.

Norms are ``"rms_norm"`` or ``"batch_norm"``; activations ``"silu"`` (``"swish"``), ``"relu"``,
``"gelu"``, ``"mish"``, as diffusers' ``get_activation`` has them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers.factories import Conv, Norm
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "mish": nn.Mish,
}
NORMS = ("rms_norm", "batch_norm")
BLOCK_TYPES = ("ResBlock", "EfficientViTBlock")


def activation(name: str) -> nn.Module:
    """The activation module called ``name`` (ValueError listing the known names)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"DC-AE: unknown activation {name!r}; expected one of {list(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def conv_nd(spatial_dims: int, *args, **kwargs) -> nn.Module:
    """``nn.Conv2d`` or ``nn.Conv3d`` (MONAI's factory) with the given arguments."""
    return Conv[Conv.CONV, spatial_dims](*args, **kwargs)


def pixel_unshuffle(x: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """(B, C, *S) -> (B, C * prod(f), *S / f): each f-block of voxels becomes channels.

    Output channel ``c * prod(f) + ravel(offset)`` at position ``p`` holds input channel ``c``
    at ``p * f + offset``; ``ravel`` is row-major over the spatial axes (D, H, W order).
    A channels-last input gives a channels-last output, as torch's pixel_unshuffle does.
    """
    b, c, *size = x.shape
    nd = len(size)
    if len(factors) != nd:
        raise ValueError(f"pixel_unshuffle: {len(factors)} factors for {nd} spatial axes")
    split: list[int] = []
    for n, f in zip(size, factors, strict=True):
        if n % f:
            raise ValueError(f"pixel_unshuffle: spatial size {n} not divisible by factor {f}")
        split += [n // f, f]
    fmt = _memory_format(x)
    x = x.reshape(b, c, *split)
    # (B, C, n0, f0, n1, f1, ...) -> (B, C, f0, f1, ..., n0, n1, ...)
    x = x.permute(0, 1, *(3 + 2 * i for i in range(nd)), *(2 + 2 * i for i in range(nd)))
    out = x.reshape(
        b, c * math.prod(factors), *(n // f for n, f in zip(size, factors, strict=True))
    )
    return out.contiguous(memory_format=fmt)


def pixel_shuffle(x: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """The inverse of :func:`pixel_unshuffle`: (B, C * prod(f), *S) -> (B, C, *S * f)."""
    b, cf, *size = x.shape
    nd = len(size)
    if len(factors) != nd:
        raise ValueError(f"pixel_shuffle: {len(factors)} factors for {nd} spatial axes")
    r = math.prod(factors)
    if cf % r:
        raise ValueError(f"pixel_shuffle: {cf} channels not divisible by prod(factors) {r}")
    fmt = _memory_format(x)
    x = x.reshape(b, cf // r, *factors, *size)
    # (B, C, f0, f1, ..., n0, n1, ...) -> (B, C, n0, f0, n1, f1, ...)
    order = [0, 1]
    for i in range(nd):
        order += [2 + nd + i, 2 + i]
    out = x.permute(*order).reshape(
        b, cf // r, *(n * f for n, f in zip(size, factors, strict=True))
    )
    return out.contiguous(memory_format=fmt)


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """Channels-last when ``x`` is laid out so and not also plain contiguous (keeping the
    layout keeps the next matmul's reduction order, hence diffusers' exact outputs)."""
    last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.ndim)
    if last is not None and not x.is_contiguous() and x.is_contiguous(memory_format=last):
        return last
    return torch.contiguous_format


class ChannelRMSNorm(nn.Module):
    """RMSNorm over the channel axis (dim 1), with weight and bias (eps 1e-5)."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x / rms over channels, computed in float32, times weight plus bias."""
        h = x.movedim(1, -1)
        ms = h.to(torch.float32).pow(2).mean(-1, keepdim=True)
        h = h * torch.rsqrt(ms + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            h = h.to(self.weight.dtype)
        return (h * self.weight + self.bias).movedim(-1, 1)


def norm_layer(kind: str, spatial_dims: int, channels: int) -> nn.Module:
    """``"rms_norm"`` (:class:`ChannelRMSNorm`) or ``"batch_norm"`` (BatchNorm2d/3d), eps 1e-5."""
    if kind == "rms_norm":
        return ChannelRMSNorm(channels)
    if kind == "batch_norm":
        return Norm[Norm.BATCH, spatial_dims](channels, eps=1e-5)
    raise ValueError(f"DC-AE: unknown norm type {kind!r}; expected one of {list(NORMS)}")


class ResBlock(nn.Module):
    """x + norm(conv2(act(conv1(x)))): 3^d convs, the second without bias."""

    def __init__(self, spatial_dims: int, channels: int, norm: str, act: str) -> None:
        super().__init__()
        self.conv1 = conv_nd(spatial_dims, channels, channels, 3, 1, 1)
        self.nonlinearity = activation(act)
        self.conv2 = conv_nd(spatial_dims, channels, channels, 3, 1, 1, bias=False)
        self.norm = norm_layer(norm, spatial_dims, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The residual block."""
        return self.norm(self.conv2(self.nonlinearity(self.conv1(x)))) + x


class MultiscaleProjection(nn.Module):
    """One extra scale of LiteMLA's q/k/v: a depthwise k^d conv then a per-head 1x1 conv."""

    def __init__(self, spatial_dims: int, channels: int, heads: int, kernel_size: int) -> None:
        super().__init__()
        self.proj_in = conv_nd(
            spatial_dims, channels, channels, kernel_size, padding=kernel_size // 2,
            groups=channels, bias=False,
        )  # fmt: skip
        self.proj_out = conv_nd(spatial_dims, channels, channels, 1, groups=heads, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Aggregate q/k/v over a k^d neighbourhood."""
        return self.proj_out(self.proj_in(x))


class LiteMLA(nn.Module):
    """EfficientViT's multi-scale ReLU linear attention (with residual), 2D or 3D.

    q, k, v are per-position linear maps; each extra scale adds a depthwise-aggregated copy of
    them as more heads. With ReLU kernels, ``out = V relu(K)^T relu(Q) / (1^T relu(K)^T
    relu(Q))`` costs O(N d^2) (linear attention, float32); when the number of positions N is at
    most ``head_dim`` the same quantity is formed the quadratic way, as EfficientViT does.
    The channel layout follows diffusers: the concatenated [q | k | v] channels (and each
    scale's) are cut into consecutive groups of ``3 * head_dim``, each split into q, k, v.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        head_dim: int,
        norm: str,
        kernel_sizes: Sequence[int] = (),
        eps: float = 1e-15,
    ) -> None:
        super().__init__()
        heads = channels // head_dim
        if heads < 1:
            raise ValueError(
                f"DC-AE: an EfficientViTBlock with {channels} channels needs attention_head_dim "
                f"<= {channels}, got {head_dim}"
            )
        inner = heads * head_dim
        self.head_dim = head_dim
        self.eps = eps
        self.to_q = nn.Linear(channels, inner, bias=False)
        self.to_k = nn.Linear(channels, inner, bias=False)
        self.to_v = nn.Linear(channels, inner, bias=False)
        self.to_qkv_multiscale = nn.ModuleList(
            MultiscaleProjection(spatial_dims, 3 * inner, 3 * heads, k) for k in kernel_sizes
        )
        self.nonlinearity = nn.ReLU()
        self.to_out = nn.Linear(inner * (1 + len(kernel_sizes)), channels, bias=False)
        self.norm_out = norm_layer(norm, spatial_dims, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + norm(to_out(attention(x)))."""
        b, _, *size = x.shape
        n = math.prod(size)
        linear = n > self.head_dim
        dtype = x.dtype
        h = x.movedim(1, -1)
        qkv = torch.cat([self.to_q(h), self.to_k(h), self.to_v(h)], dim=-1).movedim(-1, 1)
        qkv = torch.cat([qkv, *(scale(qkv) for scale in self.to_qkv_multiscale)], dim=1)
        if linear:
            qkv = qkv.to(torch.float32)
        q, k, v = qkv.reshape(b, -1, 3 * self.head_dim, n).chunk(3, dim=2)
        q, k = self.nonlinearity(q), self.nonlinearity(k)
        if linear:
            v1 = F.pad(v, (0, 0, 0, 1), value=1.0)  # a row of ones yields the normaliser
            out = torch.matmul(torch.matmul(v1, k.transpose(-1, -2)), q).to(torch.float32)
            out = (out[:, :, :-1] / (out[:, :, -1:] + self.eps)).to(dtype)
        else:
            att = torch.matmul(k.transpose(-1, -2), q).to(torch.float32)
            att = att / (att.sum(dim=2, keepdim=True) + self.eps)
            out = torch.matmul(v, att.to(v.dtype))
        out = self.to_out(out.reshape(b, -1, *size).movedim(1, -1)).movedim(-1, 1)
        return self.norm_out(out) + x


class GLUMBConv(nn.Module):
    """Gated inverted bottleneck: 1x1 up (x2 for the gate), depthwise 3^d, x * silu(gate),
    1x1 down, RMSNorm, plus the identity (expand ratio 4)."""

    def __init__(self, spatial_dims: int, channels: int, expand_ratio: float = 4) -> None:
        super().__init__()
        hidden = int(expand_ratio * channels)
        self.nonlinearity = nn.SiLU()
        self.conv_inverted = conv_nd(spatial_dims, channels, 2 * hidden, 1)
        self.conv_depth = conv_nd(spatial_dims, 2 * hidden, 2 * hidden, 3, 1, 1, groups=2 * hidden)
        self.conv_point = conv_nd(spatial_dims, hidden, channels, 1, bias=False)
        self.norm = ChannelRMSNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The gated conv block with residual."""
        h = self.conv_depth(self.nonlinearity(self.conv_inverted(x)))
        h, gate = h.chunk(2, dim=1)
        return self.norm(self.conv_point(h * self.nonlinearity(gate))) + x


class EfficientViTBlock(nn.Module):
    """:class:`LiteMLA` (context) then :class:`GLUMBConv` (local), each residual."""

    def __init__(
        self, spatial_dims: int, channels: int, head_dim: int, norm: str, scales: Sequence[int]
    ) -> None:
        super().__init__()
        self.attn = LiteMLA(spatial_dims, channels, head_dim, norm, scales)
        self.conv_out = GLUMBConv(spatial_dims, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attention then the gated conv."""
        return self.conv_out(self.attn(x))


def make_block(
    kind: str,
    spatial_dims: int,
    channels: int,
    head_dim: int,
    norm: str,
    act: str,
    scales: Sequence[int],
) -> nn.Module:
    """A ``"ResBlock"`` or an ``"EfficientViTBlock"`` of ``channels`` channels."""
    if kind == "ResBlock":
        return ResBlock(spatial_dims, channels, norm, act)
    if kind == "EfficientViTBlock":
        return EfficientViTBlock(spatial_dims, channels, head_dim, norm, scales)
    raise ValueError(f"DC-AE: unknown block type {kind!r}; expected one of {list(BLOCK_TYPES)}")


class DownBlock(nn.Module):
    """Downsample by ``factors`` (per axis): a 3^d conv, then pixel-unshuffle (``unshuffle``)
    or the conv strided by ``factors``; with ``shortcut``, plus the input pixel-unshuffled and
    averaged over groups of ``in * prod(f) / out`` consecutive channels."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        factors: Sequence[int],
        unshuffle: bool,
        shortcut: bool,
    ) -> None:
        super().__init__()
        self.factors = tuple(factors)
        self.unshuffle = unshuffle
        self.shortcut = shortcut
        r = math.prod(self.factors)
        if unshuffle and out_channels % r:
            raise ValueError(
                f"DC-AE: a pixel-unshuffle downsample by {self.factors} needs out channels "
                f"divisible by {r}, got {out_channels}"
            )
        if shortcut and (in_channels * r) % out_channels:
            raise ValueError(
                f"DC-AE: the down shortcut {in_channels} -> {out_channels} channels by "
                f"{self.factors} needs {in_channels} x {r} divisible by {out_channels}"
            )
        self.group_size = in_channels * r // out_channels
        conv_out, stride = (out_channels // r, 1) if unshuffle else (out_channels, self.factors)
        self.conv = conv_nd(spatial_dims, in_channels, conv_out, 3, stride=stride, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Downsampled features (plus the space-to-channel shortcut)."""
        h = self.conv(x)
        if self.unshuffle:
            h = pixel_unshuffle(h, self.factors)
        if not self.shortcut:
            return h
        y = pixel_unshuffle(x, self.factors).unflatten(1, (-1, self.group_size)).mean(dim=2)
        return h + y


class UpBlock(nn.Module):
    """Upsample by ``factors``: a 3^d conv then pixel-shuffle, or (``interpolate``) resize then
    conv; with ``shortcut``, plus the input with each channel repeated ``out * prod(f) / in``
    times, pixel-shuffled."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        factors: Sequence[int],
        interpolate: bool,
        shortcut: bool,
        interpolation_mode: str = "nearest",
    ) -> None:
        super().__init__()
        self.factors = tuple(factors)
        self.interpolate = interpolate
        self.interpolation_mode = interpolation_mode
        self.shortcut = shortcut
        r = math.prod(self.factors)
        if shortcut and (out_channels * r) % in_channels:
            raise ValueError(
                f"DC-AE: the up shortcut {in_channels} -> {out_channels} channels by "
                f"{self.factors} needs {out_channels} x {r} divisible by {in_channels}"
            )
        self.repeats = out_channels * r // in_channels
        conv_out = out_channels if interpolate else out_channels * r
        self.conv = conv_nd(spatial_dims, in_channels, conv_out, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Upsampled features (plus the channel-to-space shortcut)."""
        if self.interpolate:
            scale = tuple(float(f) for f in self.factors)
            h = self.conv(F.interpolate(x, scale_factor=scale, mode=self.interpolation_mode))
        else:
            h = pixel_shuffle(self.conv(x), self.factors)
        if not self.shortcut:
            return h
        y = x.repeat_interleave(self.repeats, dim=1, output_size=x.shape[1] * self.repeats)
        return h + pixel_shuffle(y, self.factors)
