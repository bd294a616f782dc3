"""The gated residual of Wan's blocks, `(x.float() + y * gate).type_as(x)`, in one pass.

diffusers materialises `y * gate` and `x.float()` in FP32 before adding and downcasting.
"""

import torch
import triton
import triton.language as tl

from ._common import check_index_range, check_last_dim_contiguous, check_modulation
from ._common import check_same_device, check_tensor, next_power_of_2


@triton.jit
def _gated_residual_kernel(
    x_ptr, y_ptr, gate_ptr, out_ptr,
    rows, L, C,
    x_sb, x_sl, y_sb, y_sl, g_sb, g_sl,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b, l = r // L, r % L
    mask = (r < rows)[:, None] & (c < C)[None, :]
    x = tl.load(x_ptr + (b * x_sb + l * x_sl)[:, None] + c[None, :], mask=mask, other=0.0)
    y = tl.load(y_ptr + (b * y_sb + l * y_sl)[:, None] + c[None, :], mask=mask, other=0.0)
    gate = tl.load(gate_ptr + (b * g_sb + l * g_sl)[:, None] + c[None, :], mask=mask, other=0.0)
    out = x.to(tl.float32) + y.to(tl.float32) * gate.to(tl.float32)
    tl.store(out_ptr + r[:, None] * C + c[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def gated_residual(x, y, gate):
    """`(x.float() + y * gate).type_as(x)`: x and y (B, L, C), gate per sample (B, 1, C) or
    per token (B, L, C); the sum in FP32, returned contiguous in x's dtype. (With a half gate
    diffusers would round `y * gate` to half first; Wan2.2's gate is FP32.)"""
    where = "gated_residual"
    kernel = _gated_residual_kernel
    check_tensor(where, "x", x, 3, kernel)
    check_tensor(where, "y", y, 3, kernel)
    if y.shape != x.shape:
        raise ValueError(f"{where}: y must have x's shape {tuple(x.shape)}, got {tuple(y.shape)}")
    b, l, c = x.shape
    check_last_dim_contiguous(where, "x", x)
    check_last_dim_contiguous(where, "y", y)
    g_sb, g_sl = check_modulation(where, "gate", gate, b, l, c, kernel)
    check_same_device(where, x=x, y=y, gate=gate)
    check_index_range(where, x, y, gate)
    out = torch.empty((b, l, c), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_c = min(next_power_of_2(c), 1024)
    block_r = max(1, min(64, 4096 // block_c))
    grid = (triton.cdiv(b * l, block_r), triton.cdiv(c, block_c))
    kernel[grid](
        x, y, gate, out, b * l, l, c,
        x.stride(0), x.stride(1), y.stride(0), y.stride(1), g_sb, g_sl,
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4,
    )
    return out
