"""Fused Triton kernels for the DiT's and the VAE decoder's memory-bound elementwise work.

    layernorm_modulate(x, shift, scale, eps=1e-6)               DiT AdaLN: LayerNorm + modulation
    rmsnorm_rope(x, weight, freqs_cos, freqs_sin, heads, eps=1e-6)  q/k RMSNorm across heads + RoPE
    gated_residual(x, y, gate)                                  x + y * gate
    rms_norm_silu(x, gamma, bias=None, eps=1e-12)               VAE RMS norm (channels first) + SiLU

Torch references: `t2vserve.kernels.reference` (`<name>_ref`). Shapes of the 5B and the
bytes each kernel moves: `SHAPES`, `bytes_moved`.

The kernel modules (and triton) are imported on first use, not with this package. Triton
decides at that import whether its kernels run compiled on CUDA or in its CPU interpreter
(TRITON_INTERPRET=1), so set the variable before the first use; tests/conftest.py does it
for the whole test session on a machine without a GPU.
"""

import importlib

from .shapes import HEADS, SHAPES, bytes_moved

_KERNELS = {
    "layernorm_modulate": "modulate",
    "rmsnorm_rope": "qk_norm_rope",
    "gated_residual": "residual",
    "rms_norm_silu": "vae_norm",
}

__all__ = [*_KERNELS, "SHAPES", "HEADS", "bytes_moved"]


def __getattr__(name):
    if name in _KERNELS:
        return getattr(importlib.import_module(f".{_KERNELS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
