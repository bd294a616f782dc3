"""The Wan VAE's RMS norm (channels first) fused with the SiLU that follows it.

In the decoder every WanRMS_norm of a residual block and of the head is followed by a SiLU;
the module path makes about five passes over a (B, C, T, H, W) activation (upcast, norm,
divide, scale, gamma, SiLU). Here a program owns BLOCK_S positions: it sums squares over the
channels in BLOCK_C chunks, then reads the chunks again (from L2) to write the output.
"""

import torch
import triton
import triton.language as tl

from ._common import check_index_range, check_same_device, check_tensor, next_power_of_2


@triton.jit
def _rms_norm_silu_kernel(
    x_ptr, gamma_ptr, bias_ptr, out_ptr,
    C, S, scale, eps,
    HAS_BIAS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    b = tl.program_id(0)
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    base = b * C * S
    ss = tl.zeros((BLOCK_S,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = (c < C)[:, None] & (s < S)[None, :]
        x = tl.load(x_ptr + base + c[:, None] * S + s[None, :], mask=mask, other=0.0)
        x = x.to(tl.float32)
        ss += tl.sum(x * x, axis=0)
    # F.normalize: x / max(||x||_2, eps)
    norm = tl.maximum(tl.sqrt(ss), eps)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = (c < C)[:, None] & (s < S)[None, :]
        offs = base + c[:, None] * S + s[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gamma = tl.load(gamma_ptr + c, mask=c < C, other=0.0).to(tl.float32)
        y = x / norm[None, :] * scale * gamma[:, None]
        if HAS_BIAS:
            y += tl.load(bias_ptr + c, mask=c < C, other=0.0).to(tl.float32)[:, None]
        y = y * tl.sigmoid(y)
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def _check_channel_param(where, name, t, c, kernel) -> None:
    check_tensor(where, name, t, t.dim(), kernel)
    if tuple(t.shape) not in ((c,), (c, 1, 1, 1)) or not t.is_contiguous():
        raise ValueError(f"{where}: {name} must be contiguous of shape {(c,)} or "
                         f"{(c, 1, 1, 1)} (WanRMS_norm's), got {tuple(t.shape)}")


def rms_norm_silu(x, gamma, bias=None, eps=1e-12):
    """SiLU(F.normalize(x, dim=1, eps=eps) * sqrt(C) * gamma + bias) for x (B, C, T, H, W)
    contiguous (channels first); gamma and bias (C,) or (C, 1, 1, 1). Computed in FP32,
    returned contiguous in x's dtype."""
    where = "rms_norm_silu"
    kernel = _rms_norm_silu_kernel
    check_tensor(where, "x", x, 5, kernel)
    if not x.is_contiguous():
        raise ValueError(f"{where}: x must be contiguous (channels first, not channels_last_3d), "
                         f"got strides {x.stride()} for shape {tuple(x.shape)}")
    b, c = x.shape[:2]
    s = x[0, 0].numel()
    _check_channel_param(where, "gamma", gamma, c, kernel)
    if bias is not None:
        _check_channel_param(where, "bias", bias, c, kernel)
    check_same_device(where, x=x, gamma=gamma, bias=bias)
    check_index_range(where, x)
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    block_c = min(next_power_of_2(c), 32)
    block_s = min(max(next_power_of_2(s), 16), 128)
    grid = (b, triton.cdiv(s, block_s))
    kernel[grid](
        x, gamma, gamma if bias is None else bias, out, c, s, float(c) ** 0.5, float(eps),
        HAS_BIAS=bias is not None, BLOCK_C=block_c, BLOCK_S=block_s, num_warps=4,
    )
    return out
