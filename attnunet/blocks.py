"""Building blocks of :class:`attnunet.AttentionUNet`: the encoder's convolution pair and downsampling
stage, the non-local block, the attention gate, a decoder stage, and the CPU inference path that runs them.

The plain convolutions come from MONAI (``Convolution``, ``UpSample``); :class:`TwoConv` and :class:`Down`
are MONAI's ``basic_unet`` blocks of the same names (same children, so the same parameter names) with a
kernel and pooling size per axis.

The inference path (:func:`inference_path_applies`, :func:`forward_inference`) computes what the
modules compute, with the same parameters, in fewer and cheaper passes: eval-mode batch norm folded
into the convolution before it, activations in place, channels-last tensors, and 1x1 convolutions as
matrix products on (position, channel) tokens. It is only taken where nothing can tell the difference
(see :func:`inference_path_applies`); the modules' own ``forward`` methods are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer
from torch import nn

from attnunet.inference_path import (
    channels_last,
    convolution_inference,
    forward_inference,
    inference_path_applies,
)

__all__ = [
    "AttentionGate",
    "DecoderStage",
    "Down",
    "NonLocalBlock",
    "TwoConv",
    "channels_last",
    "forward_inference",
    "inference_path_applies",
]


class TwoConv(nn.Sequential):
    """Two ``conv -> norm -> dropout -> act`` blocks (MONAI ``Convolution``), the first from ``in_channels``
    to ``out_channels``: MONAI's ``basic_unet.TwoConv`` with a kernel size per axis.

    Padding ``kernel_size // 2`` per axis keeps the spatial size. With ``kernel_size=3`` the children,
    their parameters and their initialisation are those of MONAI's block.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: channels of the input.
        out_channels: channels of both convolutions' outputs.
        kernel_size: an odd int, or one per axis (e.g. ``(3, 3, 1)``: in-plane only). Defaults to 3.
        norm: normalisation name or (name, kwargs) for MONAI's ``Norm`` factory.
        act: activation name or (name, kwargs) for MONAI's ``Act`` factory.
        dropout: dropout after each convolution.

    Example::

        >>> TwoConv(3, 2, 8, kernel_size=(3, 3, 1))(torch.randn(1, 2, 6, 5, 3)).shape
        torch.Size([1, 8, 6, 5, 3])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        kernel_size: int | Sequence[int] = 3,
        norm: str | tuple = "batch",
        act: str | tuple = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, channels in (("conv_0", in_channels), ("conv_1", out_channels)):
            conv = Convolution(
                spatial_dims,
                channels,
                out_channels,
                kernel_size=kernel_size,
                act=act,
                norm=norm,
                dropout=dropout,
            )
            self.add_module(name, conv)  # padding: MONAI's same_padding, kernel_size // 2 per axis


class Down(nn.Sequential):
    """Max-pooling by ``pool_size`` (kernel and stride, per axis), then :class:`TwoConv`: MONAI's
    ``basic_unet.Down`` with a pooling and kernel size per axis.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: channels of the input.
        out_channels: channels of the output.
        pool_size: 1 or 2, or one per axis (e.g. ``(2, 2, 1)``: the last axis is not downsampled).
            Defaults to 2.
        kernel_size: the convolutions' kernel size (see :class:`TwoConv`). Defaults to 3.
        norm: normalisation name or (name, kwargs) for MONAI's ``Norm`` factory.
        act: activation name or (name, kwargs) for MONAI's ``Act`` factory.
        dropout: dropout after each convolution.

    Example::

        >>> Down(3, 4, 8, pool_size=(2, 2, 1), kernel_size=(3, 3, 1))(torch.randn(1, 4, 8, 6, 3)).shape
        torch.Size([1, 8, 4, 3, 3])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        pool_size: int | Sequence[int] = 2,
        kernel_size: int | Sequence[int] = 3,
        norm: str | tuple = "batch",
        act: str | tuple = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        pool_size = pool_size if isinstance(pool_size, int) else tuple(pool_size)
        self.add_module("max_pooling", Pool["max", spatial_dims](kernel_size=pool_size))
        self.add_module(
            "convs",
            TwoConv(
                spatial_dims,
                in_channels,
                out_channels,
                kernel_size=kernel_size,
                norm=norm,
                act=act,
                dropout=dropout,
            ),
        )


class NonLocalBlock(nn.Module):
    """Attention block: a projection followed by non-local self-attention (Wang et al. 2018).

    ``h = act(norm(conv1x1(x)))`` with ``out_channels`` channels; ``theta``, ``phi`` (``out_channels // 8``
    channels, at least 1) and ``g`` (``out_channels // 2``, at least 1) are 1x1 convolutions of ``h``;
    ``phi`` and ``g`` are max-pooled by ``pool_size`` (2 per axis by default; ``ceil_mode``, so odd sizes
    and size 1 work); the block returns ``W(softmax(theta^T phi) g) + h`` with ``W`` a 1x1 convolution
    back to ``out_channels`` (the "embedded Gaussian" form of Wang et al., without scaling).

    The attention is computed by :func:`torch.nn.functional.scaled_dot_product_attention` with
    ``scale=1.0`` on contiguous ``(batch, 1 head, positions, channels)`` tensors, so PyTorch picks its
    flash / memory-efficient kernels on CPU and CUDA and never materialises the
    (positions x pooled positions) matrix.

    Reference:
        Wang, Girshick, Gupta, He. "Non-local Neural Networks". CVPR 2018, https://arxiv.org/abs/1711.07971

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: channels of the input.
        out_channels: channels of ``h`` and of the output.
        norm: normalisation of ``h``, a name or (name, kwargs) for MONAI's ``Norm`` factory.
        act: activation of ``h``, a name or (name, kwargs) for MONAI's ``Act`` factory.
        zero_init: initialise ``W`` to zero so the block starts as ``h`` (the identity on the attention
            path), as Wang et al. do.
        pool_size: the keys' and values' max-pooling (kernel and stride), 1 or 2, or one per axis: in
            :class:`attnunet.AttentionUNet`, the pooling of the block's level, so an axis the encoder does
            not pool (thick slices) is not pooled here either. Defaults to 2.

    Example::

        >>> block = NonLocalBlock(3, 64, 32)
        >>> block(torch.randn(2, 64, 8, 8, 8)).shape
        torch.Size([2, 32, 8, 8, 8])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        *,
        norm: str | tuple = "batch",
        act: str | tuple = "relu",
        zero_init: bool = False,
        pool_size: int | Sequence[int] = 2,
    ) -> None:
        super().__init__()
        key_channels = max(out_channels // 8, 1)
        value_channels = max(out_channels // 2, 1)
        conv = Conv["conv", spatial_dims]
        self.project = Convolution(
            spatial_dims, in_channels, out_channels, kernel_size=1, norm=norm, act=act, adn_ordering="NDA"
        )
        self.theta = conv(out_channels, key_channels, kernel_size=1)
        self.phi = conv(out_channels, key_channels, kernel_size=1)
        self.g = conv(out_channels, value_channels, kernel_size=1)
        self.W = conv(value_channels, out_channels, kernel_size=1)
        pool_size = pool_size if isinstance(pool_size, int) else tuple(pool_size)
        self.pool = Pool["max", spatial_dims](kernel_size=pool_size, ceil_mode=True)
        # The CPU flash kernel needs one head size for queries, keys and values; zero channels added to
        # theta and phi leave every dot product theta^T phi unchanged.
        self.key_padding = value_channels - key_channels
        if zero_init:
            nn.init.zeros_(self.W.weight)
            nn.init.zeros_(self.W.bias)

    @staticmethod
    def _tokens(x: torch.Tensor, padding: int) -> torch.Tensor:
        """(B, C, *spatial) -> contiguous (B, 1, positions, C + padding)."""
        tokens = x.flatten(2).transpose(1, 2)
        if padding > 0:
            return F.pad(tokens, [0, padding]).unsqueeze(1)  # F.pad returns a new, contiguous tensor
        return tokens.contiguous().unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.project(x)
        query = self._tokens(self.theta(h), self.key_padding)
        key = self._tokens(self.pool(self.phi(h)), self.key_padding)
        value = self._tokens(self.pool(self.g(h)), 0)
        y = F.scaled_dot_product_attention(query, key, value, scale=1.0)  # (B, 1, positions, C_g)
        shape = list(h.shape)
        shape[1] = value.shape[-1]
        y = y.squeeze(1).transpose(1, 2).reshape(shape)
        return self.W(y) + h

    @staticmethod
    def _matrix(
        weight: torch.Tensor, bias: torch.Tensor | None, padding: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A 1x1 convolution's weight as an (out, in) matrix and its bias, with ``padding`` zero output
        rows added."""
        weight = weight.flatten(1)
        if padding > 0:
            weight = F.pad(weight, [0, 0, 0, padding])
            if bias is not None:
                bias = F.pad(bias, [0, padding])
        return weight, bias

    def forward_inference(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x)`` on the inference path (see :func:`forward_inference`).

        The 1x1 convolutions become products with ``h``'s (position, channel) tokens,
        ``h.movedim(1, -1)``, which are a view with no copy when ``h`` is channels-last, and the result
        is channels-last for free; ``phi`` and ``g`` are one product, pooled together; ``W``'s output
        takes ``h`` in place.
        """
        h = forward_inference(self.project, x)
        tokens = h.movedim(1, -1)  # (B, *spatial, C)
        query_w, query_b = self._matrix(self.theta.weight, self.theta.bias, self.key_padding)
        key_w, key_b = self._matrix(self.phi.weight, self.phi.bias, self.key_padding)
        value_w, value_b = self._matrix(self.g.weight, self.g.bias, 0)
        query = F.linear(tokens, query_w, query_b).flatten(1, -2).unsqueeze(1)  # (B, 1, N, C_g)
        kv_b = None if key_b is None or value_b is None else torch.cat([key_b, value_b])
        kv = F.linear(tokens, torch.cat([key_w, value_w]), kv_b).movedim(-1, 1)  # (B, 2 C_g, *spatial)
        kv = self.pool(kv).movedim(1, -1).flatten(1, -2)  # (B, M, 2 C_g)
        head = value_w.shape[0]
        key = kv[..., :head].unsqueeze(1).contiguous()
        value = kv[..., head:].unsqueeze(1).contiguous()
        y = F.scaled_dot_product_attention(query, key, value, scale=1.0)  # (B, 1, N, C_g)
        out = F.linear(y.squeeze(1), self.W.weight.flatten(1), self.W.bias).reshape(tokens.shape)
        return out.add_(tokens).movedim(-1, 1)


class AttentionGate(nn.Module):
    """Oktay et al.'s additive attention gate: ``skip * sigmoid(psi(act(W_x skip + W_g gating)))``.

    ``W_x`` and ``W_g`` are 1x1 convolutions followed by ``norm`` (as in MONAI's block), ``psi`` a 1x1
    convolution to one channel.

    Written here rather than reusing ``monai.networks.nets.attentionunet.AttentionBlock``, which hard-codes
    BatchNorm; this one takes ``norm`` and ``act`` by name like the rest of the network. Both inputs have
    the same spatial size (the gating signal is the upsampled decoder feature, as in MONAI's
    ``AttentionUnet``).

    Reference:
        Oktay et al. "Attention U-Net: Learning Where to Look for the Pancreas". MIDL 2018,
        https://arxiv.org/abs/1804.03999

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        skip_channels: channels of the skip connection that is gated.
        gating_channels: channels of the gating signal.
        inter_channels: channels of the intermediate sum.
        norm: normalisation name or (name, kwargs) for MONAI's ``Norm`` factory.
        act: activation name or (name, kwargs) for MONAI's ``Act`` factory.

    Example::

        >>> gate = AttentionGate(2, 16, 16, 8)
        >>> gate(torch.randn(1, 16, 32, 32), torch.randn(1, 16, 32, 32)).shape
        torch.Size([1, 16, 32, 32])
    """

    def __init__(
        self,
        spatial_dims: int,
        skip_channels: int,
        gating_channels: int,
        inter_channels: int,
        *,
        norm: str | tuple = "batch",
        act: str | tuple = "relu",
    ) -> None:
        super().__init__()
        inter_channels = max(inter_channels, 1)
        self.W_x = Convolution(
            spatial_dims, skip_channels, inter_channels, kernel_size=1, norm=norm, act=None
        )
        self.W_g = Convolution(
            spatial_dims, gating_channels, inter_channels, kernel_size=1, norm=norm, act=None
        )
        self.act = get_act_layer(act)
        # no normalisation of the one-channel map (as in the paper; a group norm could not split it)
        self.psi = Convolution(spatial_dims, inter_channels, 1, kernel_size=1, norm=None, act="sigmoid")

    def forward(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        return skip * self.psi(self.act(self.W_x(skip) + self.W_g(gating)))

    def forward_inference(self, skip: torch.Tensor, gating: torch.Tensor) -> torch.Tensor:
        """``forward`` on the inference path (see :func:`forward_inference`)."""
        summed = forward_inference(self.W_x, skip).add_(forward_inference(self.W_g, gating))
        return skip * forward_inference(self.psi, self.act(summed))


class DecoderStage(nn.Module):
    """One decoder level: attention (or a plain projection) at the coarse level, upsampling by
    ``scale_factor`` (2x per axis by default), optional gating of the skip, concatenation with the skip and
    one ``kernel_size`` (3x3 by default) convolution.

    A decoder of attention, upsampling and concatenation alone has no 3x3 convolution, which leaves the
    skip and the upsampled feature unmixed at full resolution; one ``conv -> norm -> act`` after the
    concatenation fuses them, like the ``merge`` convolution of MONAI's ``AttentionUnet``. A second one (as in
    ``BasicUNet``) would add about 18% to the 3D forward time (``benchmarks/network.py``, 96^3 on a CPU).

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: channels of the coarse decoder feature; the stage outputs ``in_channels // 2``.
        skip_channels: channels of the skip connection (``in_channels // 2`` in ``AttentionUNet``).
        attention: ``"nonlocal"`` (:class:`NonLocalBlock` at the coarse level), ``"gate"``
            (:class:`AttentionGate` on the skip) or ``"none"``; the last two project with
            ``act(norm(conv1x1))``, the non-local block's own first step.
        norm: normalisation name or (name, kwargs) for MONAI's ``Norm`` factory.
        act: activation name or (name, kwargs) for MONAI's ``Act`` factory.
        dropout: dropout after the convolution.
        upsample: MONAI ``UpSample`` mode: ``"nontrainable"`` (linear interpolation) or ``"deconv"``.
        zero_init_attention: see :class:`NonLocalBlock`.
        scale_factor: the upsampling, 1 or 2, or one per axis: the pooling of the encoder level the stage
            starts at, which is also the non-local block's key pooling. Defaults to 2.
        kernel_size: the convolution's kernel size, an odd int or one per axis. Defaults to 3.

    Example::

        >>> stage = DecoderStage(2, 32, 16, attention="nonlocal")
        >>> stage(torch.randn(1, 32, 8, 8), [torch.randn(1, 16, 16, 16)]).shape
        torch.Size([1, 16, 16, 16])
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        *,
        attention: str = "nonlocal",
        norm: str | tuple = "batch",
        act: str | tuple = "relu",
        dropout: float = 0.0,
        upsample: str = "nontrainable",
        zero_init_attention: bool = False,
        scale_factor: int | Sequence[int] = 2,
        kernel_size: int | Sequence[int] = 3,
    ) -> None:
        super().__init__()
        out_channels = in_channels // 2
        if attention == "nonlocal":
            self.attention: nn.Module = NonLocalBlock(
                spatial_dims,
                in_channels,
                out_channels,
                norm=norm,
                act=act,
                zero_init=zero_init_attention,
                pool_size=scale_factor,
            )
        else:
            self.attention = Convolution(
                spatial_dims, in_channels, out_channels, kernel_size=1, norm=norm, act=act, adn_ordering="NDA"
            )
        self.gate: AttentionGate | None = None
        if attention == "gate":
            self.gate = AttentionGate(
                spatial_dims, skip_channels, out_channels, skip_channels // 2, norm=norm, act=act
            )
        self.upsample = UpSample(
            spatial_dims, out_channels, out_channels, scale_factor=scale_factor, mode=upsample, pre_conv=None
        )
        self.conv = Convolution(
            spatial_dims,
            skip_channels + out_channels,
            out_channels,
            kernel_size=kernel_size,
            act=act,
            norm=norm,
            dropout=dropout,
        )

    def merge(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """Gate ``skip`` (in ``"gate"`` mode) and concatenate it with the upsampled feature ``up``."""
        if self.gate is not None:
            skip = self.gate(skip, up)
        return torch.cat([skip, up], dim=1)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """Decode ``x`` with the last tensor of ``skips``, which is popped.

        Popping the skip lets the full-size skip and upsampled feature be freed as soon as they are
        concatenated, which cuts the peak memory of the full-resolution stage.
        """
        return self.conv(self.merge(skips.pop(), self.upsample(self.attention(x))))

    def forward_inference(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """``forward`` on the inference path (see :func:`forward_inference`)."""
        up = forward_inference(self.upsample, forward_inference(self.attention, x))
        skip = skips.pop()
        if self.gate is not None:
            skip = self.gate.forward_inference(skip, up)
        return convolution_inference(self.conv, [skip, up])  # the convolution of their concatenation
