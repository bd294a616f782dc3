"""Torch references for the fused kernels: the exact module code paths they replace.

Each `<name>_ref` computes what diffusers 0.42.1 (and, for q/k, this repository's
`WanAttnProcessorExport`) computes, in the same order and dtypes, so in FP32 it is bit-exact
with the model (tests/unit/test_kernels.py checks that against the modules). Importable
without triton.
"""

import torch
import torch.nn.functional as F


def layernorm_modulate_ref(x, shift, scale, eps=1e-6):
    """WanTransformerBlock's `(norm1(x.float()) * (1 + scale) + shift).type_as(x)`, norm1 an
    FP32 LayerNorm without affine; shift/scale (B, 1, C) or (B, L, C), FP32 in Wan2.2."""
    normed = F.layer_norm(x.float(), (x.shape[-1],), None, None, eps)
    return (normed * (1 + scale) + shift).type_as(x)


def rope_ref(x, freqs_cos, freqs_sin):
    """diffusers' `apply_rotary_emb` of WanAttnProcessor: interleaved pairs (x[2i], x[2i+1]),
    x (B, L, H, D), freqs (1, L, 1, D) as WanRotaryPosEmbed returns them."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


def rmsnorm_rope_ref(x, weight, freqs_cos, freqs_sin, heads, eps=1e-6):
    """`norm_q`/`norm_k` (torch.nn.RMSNorm across all heads, x (B, L, H*D)), unflatten to
    (B, L, H, D), then RoPE: the q/k step of WanAttnProcessorExport."""
    normed = F.rms_norm(x, (x.shape[-1],), weight, eps)
    return rope_ref(normed.unflatten(2, (heads, -1)), freqs_cos, freqs_sin)


def gated_residual_ref(x, y, gate):
    """WanTransformerBlock's `(x.float() + y * gate).type_as(x)`; gate (B, 1, C) or (B, L, C),
    FP32 in Wan2.2, so `y * gate` is computed in FP32."""
    return (x.float() + y * gate).type_as(x)


def rms_norm_silu_ref(x, gamma, bias=None, eps=1e-12):
    """The Wan VAE's WanRMS_norm (channels first, x (B, C, T, H, W)) and the SiLU after it:
    `F.normalize(x, dim=1) * sqrt(C) * gamma + bias` (normalised in FP32 for half inputs,
    eps clamps the L2 norm from below as F.normalize does), then SiLU."""
    half = x.dtype in (torch.float16, torch.bfloat16)
    normed = F.normalize(x.float() if half else x, dim=1, eps=eps).to(x.dtype)
    gamma = gamma.reshape(-1, 1, 1, 1)
    out = normed * x.shape[1] ** 0.5 * gamma + (0.0 if bias is None else bias.reshape(-1, 1, 1, 1))
    return F.silu(out)
