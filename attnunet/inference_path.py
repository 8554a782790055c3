"""The blocks' inference path: the same parameters computed in fewer, cheaper passes (eval-mode batch
norm folded into the convolution, channels-last tensors for oneDNN, the convolution of a concatenation
as a sum of convolutions), used only where it gives the same numbers: eval mode, no grad, eager, no
hooks. Split from :mod:`attnunet.blocks`, which applies it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["channels_last", "convolution_inference", "forward_inference", "inference_path_applies"]


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def channels_last(spatial_dims: int) -> torch.memory_format:
    """The channels-last memory format of a ``(batch, channels, *spatial)`` tensor."""
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last


def _has_hooks(module: nn.Module) -> bool:
    """Whether a forward hook is registered on ``module``, one of its submodules, or globally."""
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def inference_path_applies(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` may compute ``x`` by :func:`forward_inference` instead of its ``forward``.

    Only in eval mode without autograd (``torch.no_grad``, ``torch.inference_mode``), on the CPU, in
    eager mode, and with no forward hook anywhere: tracing, ``torch.compile`` and ONNX export see the
    modules as they are, and so do hooks (``torchinfo``'s table, feature probes), since the inference
    path calls few of the submodules. Call it under ``if not torch.jit.is_scripting():``, a block that
    TorchScript does not compile.
    """
    return (
        not module.training
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not _has_hooks(module)
    )


def forward_inference(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for a module of :class:`attnunet.AttentionUNet` in eval mode, computed faster.

    MONAI ``Convolution`` blocks go through :func:`_convolution_inference`; the attention blocks and the
    decoder stage through their ``forward_inference``; plain ``nn.Sequential`` containers (``TwoConv``,
    ``Down``, MONAI's ``UpSample``) child by child; anything else is called as it is. Only call
    it where :func:`inference_path_applies`.
    """
    if isinstance(module, Convolution):
        return convolution_inference(module, [x])
    if callable(getattr(module, "forward_inference", None)):  # a block with its own path (NonLocalBlock)
        return module.forward_inference(x)
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        for child in module:
            x = forward_inference(child, x)
        return x
    return module(x)


def _is_pointwise(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain 1x1 convolution: one matrix product per position."""
    return (
        all(k == 1 for k in conv.kernel_size)
        and all(s == 1 for s in conv.stride)
        and all(d == 1 for d in conv.dilation)
        and (isinstance(conv.padding, str) or all(p == 0 for p in conv.padding))
        and conv.groups == 1
    )


def convolution_inference(block: Convolution, parts: list[torch.Tensor]) -> torch.Tensor:
    """A MONAI ``Convolution`` (``conv -> norm -> dropout -> act``) of ``torch.cat(parts, dim=1)`` in
    eval mode, without a norm pass.

    An eval-mode batch norm is the per-channel affine map ``scale * y + shift``. Where the weight is
    smaller than the output (the high-resolution layers) the map is folded into the weight and bias,
    and the folded weight is made channels-last so that oneDNN convolves in that layout without
    reordering its input and output; where the weight is larger (512 x 512 x 3^3 at 6^3 voxels) the map
    is applied in place to the output, which costs less than scaling the weight on every call. Where it
    is folded, the convolution of the concatenated ``parts`` is the sum of the parts' convolutions with
    the matching slices of the weight: no concatenated copy (226 MB for the decoder's 96^3 x 64 input),
    and about 10% less time for that convolution. ReLU and leaky ReLU run in place: a fresh
    96^3 x 32 output costs about ten times the activation (page faults). A 1x1 convolution of a
    channels-last tensor is a matrix product on its tokens (on one thread ATen computes it without
    oneDNN, from a channels-first copy of the input). Other norms, orderings and transposed
    convolutions run as the block does.
    """
    conv = block.conv
    layers = list(block.adn.named_children()) if "adn" in block._modules else []
    names = [name for name, _ in layers]
    norm = layers[0][1] if names[:1] == ["N"] else None
    foldable = norm is None or (
        isinstance(norm, _BATCH_NORMS) and norm.running_mean is not None and norm.running_var is not None
    )
    if not isinstance(conv, (nn.Conv2d, nn.Conv3d)) or "N" in names[1:] or not foldable:
        return block(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
    weight, bias = conv.weight, conv.bias
    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    weights = [weight]
    if norm is not None:
        layers = layers[1:]
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias
        if weight.numel() <= parts[0][:, :1].numel() * conv.out_channels:
            weight = weight * scale.reshape(-1, *[1] * (weight.dim() - 1))
            bias = shift if bias is None else bias * scale + shift
            scale = shift = None
            layout = channels_last(weight.dim() - 2)
            sizes = [part.shape[1] for part in parts]
            weights = [w.contiguous(memory_format=layout) for w in weight.split(sizes, dim=1)]
    if len(parts) > len(weights):
        parts = [torch.cat(parts, dim=1)]
    y = _convolve(conv, parts[0], weights[0], bias)
    for part, part_weight in zip(parts[1:], weights[1:], strict=True):
        y = y.add_(_convolve(conv, part, part_weight, None))
    if scale is not None and shift is not None:
        per_channel = (1, -1) + (1,) * (y.dim() - 2)
        y = y.mul_(scale.reshape(per_channel)).add_(shift.reshape(per_channel))
    for _, layer in layers:
        if isinstance(layer, nn.ReLU):
            y = y.relu_()
        elif isinstance(layer, nn.LeakyReLU):
            y = F.leaky_relu_(y, layer.negative_slope)
        else:
            y = layer(y)
    return y


def _convolve(
    conv: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """``conv`` with ``weight`` and ``bias`` in place of its own; a 1x1 convolution of a channels-last
    ``x`` as a matrix product on its (position, channel) tokens."""
    if _is_pointwise(conv) and x.is_contiguous(memory_format=channels_last(x.dim() - 2)):
        return F.linear(x.movedim(1, -1), weight.flatten(1), bias).movedim(-1, 1)
    return conv._conv_forward(x, weight, bias)
