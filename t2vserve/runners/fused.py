"""The fused Triton kernels in the torch runtime: profile `components.<c>.kernels: triton`.

`use_kernels(module)` installs replacement forwards on the module's own instances (never on
diffusers' classes): in each `WanTransformerBlock` the norm1/norm3 LayerNorm with its AdaLN
modulation and the two gated residuals, in self-attention the q/k RMSNorm across heads with
RoPE, and in the VAE's residual blocks and decoder head each RMS norm with the SiLU after it.
Everything else (the matmuls, SDPA, convolutions, cross-attention) runs as before. Only the
torch runtime's own copy is patched: export builds its modules afresh, so the ONNX/TensorRT
path is unchanged (TensorRT fuses on its own).

The kernel functions are looked up at each call (`KernelOps`), so the same wiring runs the
kernels' torch references in tests, and importing this module does not import triton.
"""

import importlib
import os
import types

import torch

from t2vserve.export.wrappers import WanAttnProcessorExport
from t2vserve.profile import KERNELS

OPS = ("layernorm_modulate", "rmsnorm_rope", "gated_residual", "rms_norm_silu")


class KernelOps:
    """The four fused functions, from `t2vserve.kernels` (Triton) or, with `reference=True`,
    `t2vserve.kernels.reference` (their torch references, `<name>_ref`)."""

    def __init__(self, reference: bool = False):
        self.reference = reference

    def __getattr__(self, name):
        if name not in OPS:
            raise AttributeError(name)
        if self.reference:
            return getattr(importlib.import_module("t2vserve.kernels.reference"), name + "_ref")
        return getattr(importlib.import_module("t2vserve.kernels"), name)


def check_kernels(value, where: str) -> str:
    if value not in KERNELS:
        raise ValueError(f"{where} must be one of {', '.join(KERNELS)}, got {value!r}")
    return value


def check_device(device) -> None:
    """Triton kernels run on CUDA tensors, or on CPU ones under the interpreter (tests)."""
    device = torch.device(device)
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"kernels: triton needs a CUDA device (or TRITON_INTERPRET=1, "
                         f"Triton's CPU interpreter, for tests); this runs on {str(device)!r}")


def _modulation(block, temb):
    """diffusers' six AdaLN rows in FP32: (B, L, C) each per token (Wan2.2 TI2V, temb
    (B, L, 6, C)) or (B, 1, C) per sample (temb (B, 6, C))."""
    if temb.ndim == 4:
        return (block.scale_shift_table.unsqueeze(0) + temb.float()).unbind(2)
    return (block.scale_shift_table + temb.float()).chunk(6, dim=1)


def _fused_block_forward(block, hidden_states, encoder_hidden_states, temb, rotary_emb):
    """WanTransformerBlock.forward (diffusers 0.42.1) with its norm+modulate and gated
    residuals fused; cross-attention and its optional affine norm2 are unchanged."""
    ops = block._t2v_ops
    shift, scale, gate, c_shift, c_scale, c_gate = _modulation(block, temb)
    x = ops.layernorm_modulate(hidden_states, shift, scale, eps=block.norm1.eps)
    attn = block.attn1(x, None, None, rotary_emb)
    hidden_states = ops.gated_residual(hidden_states, attn, gate)
    x = block.norm2(hidden_states.float()).type_as(hidden_states)
    hidden_states = hidden_states + block.attn2(x, encoder_hidden_states, None, None)
    x = ops.layernorm_modulate(hidden_states, c_shift, c_scale, eps=block.norm3.eps)
    return ops.gated_residual(hidden_states, block.ffn(x), c_gate)


class FusedAttnProcessor(WanAttnProcessorExport):
    """The export processor with q/k RMSNorm across heads and RoPE fused (self-attention;
    cross-attention has no RoPE and keeps the unfused norms)."""

    def __init__(self, ops, sdpa_always: bool = False):
        super().__init__(sdpa_always)
        self.ops = ops

    def qk(self, attn, hidden_states, context, rotary_emb):
        if rotary_emb is None:
            return super().qk(attn, hidden_states, context, rotary_emb)
        cos, sin = rotary_emb
        q = self.ops.rmsnorm_rope(attn.to_q(hidden_states), attn.norm_q.weight, cos, sin,
                                  attn.heads, eps=attn.norm_q.eps)
        k = self.ops.rmsnorm_rope(attn.to_k(context), attn.norm_k.weight, cos, sin,
                                  attn.heads, eps=attn.norm_k.eps)
        return q, k


def _fused_norm_silu_forward(norm, x):
    """WanRMS_norm then SiLU in one kernel (the caller's SiLU becomes the identity). The
    decoder hands some norms permuted views (after its upsamplers' reshapes); one copy to
    channels-first order still leaves fewer passes than norm, scale and SiLU."""
    bias = norm.bias if isinstance(norm.bias, torch.Tensor) else None
    return norm._t2v_ops.rms_norm_silu(x.contiguous(), norm.gamma, bias)


def use_kernels(module: torch.nn.Module, ops=None) -> int:
    """Patch every fusable instance under `module` in place; returns how many were patched.
    Idempotent: the VAE's first-chunk and step wrappers share one decoder. Bound methods, so
    a deepcopy of a patched module runs on its own weights."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import (
        WanDecoder3d, WanResidualBlock, WanRMS_norm,
    )
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    ops = ops or KernelOps()
    patched = 0
    for m in list(module.modules()):
        if getattr(m, "_t2v_kernels", False):
            continue
        if isinstance(m, WanTransformerBlock):
            if m.attn1.add_k_proj is not None:
                raise NotImplementedError("image-context (I2V) attention has no fused path")
            old = m.attn1.processor
            m.attn1.set_processor(FusedAttnProcessor(ops, getattr(old, "sdpa_always", False)))
            m._t2v_ops = ops
            m.forward = types.MethodType(_fused_block_forward, m)
        elif isinstance(m, (WanResidualBlock, WanDecoder3d)):
            # in these two, every call of the SiLU directly follows one of these norms
            norms = [getattr(m, n) for n in ("norm1", "norm2", "norm_out") if hasattr(m, n)]
            if not (isinstance(m.nonlinearity, torch.nn.SiLU)
                    and all(isinstance(n, WanRMS_norm) and n.channel_first for n in norms)):
                continue
            for n in norms:
                n._t2v_ops = ops
                n.forward = types.MethodType(_fused_norm_silu_forward, n)
            m.nonlinearity = torch.nn.Identity()
        else:
            continue
        m._t2v_kernels = True
        patched += 1
    return patched
