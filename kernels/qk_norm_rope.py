"""Wan's q/k path in one pass: RMSNorm across all heads, then RoPE on interleaved pairs.

The module path reads and writes (B, L, H*D) about six times (upcast, mean of squares, scale,
weight, the two halves of the rotation, the stack); here once each way.
"""

import torch
import triton
import triton.language as tl

from ._common import check_index_range, check_last_dim_contiguous, check_same_device
from ._common import check_tensor, next_power_of_2


@triton.jit
def _rmsnorm_rope_kernel(
    x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr,
    L, C, D,
    x_sb, x_sl, f_sb, f_sl,
    eps,
    BLOCK_P: tl.constexpr,
):
    # one token's row of C = H*D channels, as BLOCK_P (even, odd) pairs
    row = tl.program_id(0)
    b, l = row // L, row % L
    p = tl.arange(0, BLOCK_P)
    pair = (p < C // 2)[:, None] & (tl.arange(0, 2) < 2)[None, :]
    offs = (2 * p)[:, None] + tl.arange(0, 2)[None, :]
    x = tl.load(x_ptr + b * x_sb + l * x_sl + offs, mask=pair, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=pair, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(x * x, axis=1), axis=0) / C + eps)
    even, odd = tl.split(x * rstd * w)
    # RoPE uses cos of the even and sin of the odd element of each pair, as diffusers does
    d = (2 * p) % D
    f = b * f_sb + l * f_sl + d
    cos = tl.load(cos_ptr + f, mask=p < C // 2, other=0.0).to(tl.float32)
    sin = tl.load(sin_ptr + f + 1, mask=p < C // 2, other=0.0).to(tl.float32)
    out = tl.join(even * cos - odd * sin, even * sin + odd * cos)
    tl.store(out_ptr + row * C + offs, out.to(out_ptr.dtype.element_ty), mask=pair)


def _check_freqs(where, name, f, b, l, d, kernel) -> tuple[int, int]:
    # WanRotaryPosEmbed's tables are float64 until the model is cast; the kernel rounds to FP32
    check_tensor(where, name, f, 4, kernel, float64=True)
    if f.shape[0] not in (1, b) or tuple(f.shape[1:]) != (l, 1, d):
        raise ValueError(f"{where}: {name} must be {(1, l, 1, d)} or {(b, l, 1, d)} "
                         f"(WanRotaryPosEmbed's layout), got {tuple(f.shape)}")
    check_last_dim_contiguous(where, name, f)
    return (f.stride(0) if f.shape[0] > 1 else 0), (f.stride(1) if l > 1 else 0)


def rmsnorm_rope(x, weight, freqs_cos, freqs_sin, heads, eps=1e-6):
    """RMSNorm of x (B, L, H*D) across all heads with weight (H*D,), then RoPE with freqs
    (1 or B, L, 1, D); returns (B, L, H, D) contiguous in x's dtype, computed in FP32."""
    where = "rmsnorm_rope"
    kernel = _rmsnorm_rope_kernel
    check_tensor(where, "x", x, 3, kernel)
    b, l, c = x.shape
    if not isinstance(heads, int) or heads < 1 or c % heads or (c // heads) % 2:
        raise ValueError(f"{where}: heads must be a positive int dividing x's last dimension "
                         f"{c} into an even head_dim, got {heads!r}")
    d = c // heads
    check_last_dim_contiguous(where, "x", x)
    check_tensor(where, "weight", weight, 1, kernel)
    if tuple(weight.shape) != (c,) or not weight.is_contiguous():
        raise ValueError(f"{where}: weight must be contiguous of shape {(c,)}, "
                         f"got {tuple(weight.shape)} with strides {weight.stride()}")
    f_sb, f_sl = _check_freqs(where, "freqs_cos", freqs_cos, b, l, d, kernel)
    if freqs_sin.shape != freqs_cos.shape or freqs_sin.stride() != freqs_cos.stride():
        raise ValueError(f"{where}: freqs_sin must have freqs_cos's shape and strides "
                         f"{tuple(freqs_cos.shape)} {freqs_cos.stride()}, got "
                         f"{tuple(freqs_sin.shape)} {freqs_sin.stride()}")
    _check_freqs(where, "freqs_sin", freqs_sin, b, l, d, kernel)
    check_same_device(where, x=x, weight=weight, freqs_cos=freqs_cos, freqs_sin=freqs_sin)
    check_index_range(where, x, freqs_cos, freqs_sin)
    out = torch.empty((b, l, heads, d), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_p = next_power_of_2(c // 2)
    kernel[(b * l,)](
        x, weight, freqs_cos, freqs_sin, out, l, c, d,
        x.stride(0), x.stride(1), f_sb, f_sl, float(eps),
        BLOCK_P=block_p, num_warps=4 if block_p <= 1024 else 8,
    )
    return out
