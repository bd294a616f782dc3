"""LayerNorm (no affine) fused with Wan2.2's AdaLN modulation `x̂ * (1 + scale) + shift`.

diffusers runs it as five passes over (B, L, C) in FP32 (upcast, layer_norm, 1 + scale, *, +)
and a downcast; here x is read once, shift and scale once, the output written once.
"""

import torch
import triton
import triton.language as tl

from ._common import check_index_range, check_last_dim_contiguous, check_modulation
from ._common import check_same_device, check_tensor, next_power_of_2


@triton.jit
def _layernorm_modulate_kernel(
    x_ptr, shift_ptr, scale_ptr, out_ptr,
    rows, L, C,
    x_sb, x_sl, sh_sb, sh_sl, sc_sb, sc_sl,
    eps,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # BLOCK_R rows (tokens, flattened over B and L) of the whole channel dimension
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.arange(0, BLOCK_C)
    b, l = r // L, r % L
    mask = (r < rows)[:, None] & (c < C)[None, :]
    x = tl.load(x_ptr + (b * x_sb + l * x_sl)[:, None] + c[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    mean = tl.sum(x, axis=1) / C
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / C
    normed = xc * (1.0 / tl.sqrt(var + eps))[:, None]
    shift = tl.load(shift_ptr + (b * sh_sb + l * sh_sl)[:, None] + c[None, :], mask=mask, other=0.0)
    scale = tl.load(scale_ptr + (b * sc_sb + l * sc_sl)[:, None] + c[None, :], mask=mask, other=0.0)
    out = normed * (1.0 + scale.to(tl.float32)) + shift.to(tl.float32)
    tl.store(out_ptr + r[:, None] * C + c[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def row_block(c: int) -> tuple[int, int]:
    """(rows, channels) per program: the whole row, and several rows when C is small, so a
    program holds about 4096 elements."""
    block_c = next_power_of_2(c)
    return max(1, min(64, 4096 // block_c)), block_c


def layernorm_modulate(x, shift, scale, eps=1e-6):
    """`(layer_norm(x.float()) * (1 + scale) + shift).type_as(x)`, x (B, L, C), shift and
    scale per sample (B, 1, C) or per token (B, L, C) in any float dtype; computed in FP32,
    returned contiguous in x's dtype."""
    where = "layernorm_modulate"
    kernel = _layernorm_modulate_kernel
    check_tensor(where, "x", x, 3, kernel)
    b, l, c = x.shape
    check_last_dim_contiguous(where, "x", x)
    sh_sb, sh_sl = check_modulation(where, "shift", shift, b, l, c, kernel)
    sc_sb, sc_sl = check_modulation(where, "scale", scale, b, l, c, kernel)
    check_same_device(where, x=x, shift=shift, scale=scale)
    check_index_range(where, x, shift, scale)
    out = torch.empty((b, l, c), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_r, block_c = row_block(c)
    grid = (triton.cdiv(b * l, block_r),)
    kernel[grid](
        x, shift, scale, out, b * l, l, c,
        x.stride(0), x.stride(1), sh_sb, sh_sl, sc_sb, sc_sl, float(eps),
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4 if block_c <= 1024 else 8,
    )
    return out
