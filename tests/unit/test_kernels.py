"""The Triton kernels of t2vserve.kernels against their torch references.

Without a GPU they run in Triton's CPU interpreter: tests/conftest.py sets TRITON_INTERPRET=1
before anything imports a kernel module. Shapes are small (the interpreter's cost grows with
the number of programs) but leave masked tails: C not a power of two, rows and positions not a
multiple of the block. FP32 must agree to 1e-5; FP16/BF16 outputs within one unit in the last
place of the FP32 reference (inputs upcast) rounded to that dtype.
"""

import os
import re

import pytest
import torch
import torch.nn.functional as F

from t2vserve import kernels
from t2vserve.kernels import reference as ref

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET else "cuda"
pytestmark = pytest.mark.skipif(not INTERPRET and not torch.cuda.is_available(),
                                reason="needs TRITON_INTERPRET=1 or a CUDA device")
HALF = (torch.float16, torch.bfloat16)


def rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(DEVICE)


def assert_matches(out, reference_fp32, dtype):
    """FP32: 1e-5. Half: |out - r| <= ulp(r), r the FP32 reference rounded to `dtype`."""
    assert out.dtype == dtype and out.shape == reference_fp32.shape
    if dtype == torch.float32:
        torch.testing.assert_close(out, reference_fp32, atol=1e-5, rtol=1e-5)
        return
    r = reference_fp32.to(dtype)
    ulp = (torch.nextafter(r.abs(), torch.full_like(r, float("inf"))) - r.abs()).float()
    err = (out.float() - r.float()).abs()
    worst = (err / ulp).max().item()
    assert worst <= 1.0, f"{worst:.2f} ulp of {dtype} from the FP32 reference"


def up(*tensors):
    return [None if t is None else t.float() for t in tensors]


# -- the references are the module code paths, bit for bit -----------------------------------

def test_references_are_the_diffusers_and_export_code_paths():
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm
    from diffusers.models.normalization import FP32LayerNorm
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    from t2vserve.export.wrappers import _rope

    b, c, heads = 2, 48, 4
    latents = torch.zeros(1, 8, 2, 6, 8)  # patch (1, 2, 2): 2 x 3 x 4 = 24 tokens
    cos, sin = WanRotaryPosEmbed(c // heads, (1, 2, 2), max_seq_len=32)(latents)
    l = cos.shape[1]
    for dtype in (torch.float32, torch.bfloat16):
        x, shift, scale = rand(b, l, c, dtype=dtype).cpu(), rand(b, l, c, seed=1).cpu(), rand(b, l, c, seed=2).cpu()
        norm1 = FP32LayerNorm(c, 1e-6, elementwise_affine=False)
        block = (norm1(x.float()) * (1 + scale) + shift).type_as(x)
        assert torch.equal(ref.layernorm_modulate_ref(x, shift, scale), block)

        norm_q = torch.nn.RMSNorm(c, eps=1e-6).to(dtype)
        with torch.no_grad():
            norm_q.weight.copy_(rand(c, seed=3).cpu())
        q = _rope(norm_q(x).unflatten(2, (heads, -1)), cos, sin)
        assert torch.equal(ref.rmsnorm_rope_ref(x, norm_q.weight, cos, sin, heads), q)

        vae_norm = WanRMS_norm(c, images=False).to(dtype)
        with torch.no_grad():
            vae_norm.gamma.copy_(rand(c, 1, 1, 1, seed=4).cpu())
        v = rand(b, c, 2, 3, 5, dtype=dtype).cpu()
        assert torch.equal(ref.rms_norm_silu_ref(v, vae_norm.gamma), F.silu(vae_norm(v)))


# -- kernels against references --------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("layout", ["per_token", "per_sample", "strided"])
@pytest.mark.parametrize("c", [40, 1100])
def test_layernorm_modulate(dtype, layout, c):
    b, l = 2, 33 if c < 1024 else 5
    x = rand(b, l, c, dtype=dtype) * 3 + 1
    if layout == "strided":  # Wan2.2's rows: unbind of (B, L, 6, C) FP32 modulation
        shift, scale, *_ = (rand(b, l, 6, c, seed=1) * 0.5).unbind(2)
    else:
        rows = l if layout == "per_token" else 1
        shift, scale = rand(b, rows, c, seed=1), rand(b, rows, c, seed=2) * 0.5
    out = kernels.layernorm_modulate(x, shift, scale)
    assert_matches(out, ref.layernorm_modulate_ref(*up(x, shift, scale)), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("layout", ["per_token", "per_sample", "strided"])
@pytest.mark.parametrize("c", [40, 1100])
def test_gated_residual(dtype, layout, c):
    b, l = 2, 33 if c < 1024 else 5
    x, y = rand(b, l, c, dtype=dtype), rand(b, l, c, dtype=dtype, seed=1)
    if layout == "strided":
        gate = rand(b, l, 6, c, seed=2).unbind(2)[2]
    else:
        gate = rand(b, l if layout == "per_token" else 1, c, seed=2)
    out = kernels.gated_residual(x, y, gate)
    assert_matches(out, ref.gated_residual_ref(*up(x, y, gate)), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("layout", ["shared_freqs", "per_sample_freqs", "strided_x", "float64_freqs"])
def test_rmsnorm_rope(dtype, layout):
    b, l, heads, d = 2, 7, 3, 20  # C = 60: 30 pairs in a block of 32
    c = heads * d
    x = rand(b, l, c, dtype=dtype) * 2
    if layout == "strided_x":  # q out of a fused qkv projection
        x = rand(b, l, 3 * c, dtype=dtype)[..., c:2 * c]
    weight = rand(c, dtype=dtype, seed=1)
    # unrelated tables, not true angles, so that which element of each pair is read matters
    rows = b if layout == "per_sample_freqs" else 1
    cos, sin = rand(rows, l, 1, d, seed=2), rand(rows, l, 1, d, seed=3)
    if layout == "float64_freqs":
        cos, sin = cos.double(), sin.double()
    out = kernels.rmsnorm_rope(x, weight, cos, sin, heads)
    assert out.shape == (b, l, heads, d) and out.is_contiguous()
    assert_matches(out, ref.rmsnorm_rope_ref(*up(x, weight, cos, sin), heads), dtype)


def test_rmsnorm_rope_with_wan_rotary_tables():
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    heads, d = 2, 12
    cos, sin = WanRotaryPosEmbed(d, (1, 2, 2), max_seq_len=32)(torch.zeros(1, 8, 3, 4, 6))
    cos, sin = cos.float().to(DEVICE), sin.float().to(DEVICE)
    x, weight = rand(1, cos.shape[1], heads * d), rand(heads * d, seed=1)
    out = kernels.rmsnorm_rope(x, weight, cos, sin, heads)
    assert_matches(out, ref.rmsnorm_rope_ref(x, weight, cos, sin, heads), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("shape,bias,gamma_shape", [
    ((2, 40, 3, 5, 7), False, "c111"),   # 40 channels: a second, partial chunk of 32
    ((1, 20, 2, 9, 10), True, "c"),      # 180 positions: two programs, the second partial
])
def test_rms_norm_silu(dtype, shape, bias, gamma_shape):
    c = shape[1]
    x = rand(*shape, dtype=dtype)
    x[:, :, 0, 0, 0] = 0  # a zero vector: the norm is clamped to eps, as F.normalize does
    gamma = rand(c, 1, 1, 1, dtype=dtype, seed=1)
    gamma = gamma if gamma_shape == "c111" else gamma.flatten()
    b = rand(c, dtype=dtype, seed=2) if bias else None
    out = kernels.rms_norm_silu(x, gamma, b)
    assert_matches(out, ref.rms_norm_silu_ref(*up(x, gamma, b)), dtype)


# -- the wrappers' refusals ------------------------------------------------------------------

def _refusal_args():
    x, mod = rand(2, 5, 8), rand(2, 5, 8, seed=1)
    cos = sin = rand(1, 5, 1, 4, seed=2)
    v, gamma = rand(1, 8, 2, 3, 3), rand(8, 1, 1, 1)
    return {
        "dtype": ("float32, float16 or bfloat16", "layernorm_modulate", (x.double(), mod, mod)),
        "gate_dtype": ("float32, float16 or bfloat16", "gated_residual",
                       (x, x, mod.to(torch.int32))),
        "ndim": ("3 dimensions", "layernorm_modulate", (x[0], mod, mod)),
        "rows": ("per sample (2, 1, 8) or per token (2, 5, 8)", "layernorm_modulate",
                 (x, rand(2, 2, 8), mod)),
        "batch": ("per sample (2, 1, 8)", "gated_residual", (x, x, rand(3, 1, 8))),
        "y_shape": ("y must have x's shape", "gated_residual", (x, rand(2, 5, 9), mod)),
        "x_last_stride": ("contiguous in its last dimension", "layernorm_modulate",
                          (rand(2, 8, 5).transpose(1, 2), mod, mod)),
        "gate_last_stride": ("contiguous in its last dimension", "gated_residual",
                             (x, x, rand(2, 8, 5).transpose(1, 2))),
        "heads": ("heads must be a positive int", "rmsnorm_rope", (x, rand(8), cos, sin, 3)),
        "weight": ("weight must be contiguous of shape (8,)", "rmsnorm_rope",
                   (x, rand(4), cos, sin, 2)),
        "freqs": ("freqs_cos must be (1, 5, 1, 4) or (2, 5, 1, 4)", "rmsnorm_rope",
                  (x, rand(8), rand(1, 6, 1, 4), sin, 2)),
        "freqs_dtype": ("float64", "rmsnorm_rope", (x, rand(8), cos.to(torch.int16), sin, 2)),
        "vae_ndim": ("5 dimensions", "rms_norm_silu", (v[0], gamma)),
        "channels_last": ("not channels_last_3d", "rms_norm_silu",
                          (v.to(memory_format=torch.channels_last_3d), gamma)),
        "gamma": ("gamma must be contiguous of shape (8,) or (8, 1, 1, 1)", "rms_norm_silu",
                  (v, rand(4, 1, 1, 1))),
        "bias": ("bias must be contiguous", "rms_norm_silu", (v, gamma, rand(2, 4))),
    }


@pytest.mark.parametrize("case", ["dtype", "gate_dtype", "ndim", "rows", "batch", "y_shape",
                                  "x_last_stride", "gate_last_stride", "heads", "weight", "freqs",
                                  "freqs_dtype", "vae_ndim", "channels_last", "gamma", "bias"])
def test_wrapper_refuses(case):
    message, name, args = _refusal_args()[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(kernels, name)(*args)


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors are accepted only under the interpreter")
def test_cpu_tensors_need_the_interpreter(monkeypatch):
    """A kernel module imported without TRITON_INTERPRET=1 holds compiled (CUDA) kernels;
    its wrapper refuses CPU tensors instead of failing inside triton."""
    from triton.runtime.jit import JITFunction

    from t2vserve.kernels import modulate, vae_norm

    compiled = JITFunction(modulate._layernorm_modulate_kernel.fn)
    monkeypatch.setattr(modulate, "_layernorm_modulate_kernel", compiled)
    x = rand(1, 2, 8)
    with pytest.raises(ValueError, match="x must be a CUDA tensor .*TRITON_INTERPRET=1"):
        modulate.layernorm_modulate(x, x, x)
    monkeypatch.setattr(vae_norm, "_rms_norm_silu_kernel",
                        JITFunction(vae_norm._rms_norm_silu_kernel.fn))
    with pytest.raises(ValueError, match="CUDA tensor"):
        vae_norm.rms_norm_silu(rand(1, 4, 1, 2, 2), rand(4))


def test_package_import_loads_neither_triton_nor_torch():
    import subprocess
    import sys

    code = ("import sys, t2vserve.kernels as k; assert 'triton' not in sys.modules; "
            "assert 'torch' not in sys.modules; "
            "assert k.bytes_moved('gated_residual', k.SHAPES['gated_residual']['720p']) > 0")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- shapes and bytes for the benchmark ------------------------------------------------------

def test_shapes_and_bytes_moved():
    lnm = kernels.SHAPES["layernorm_modulate"]
    assert lnm["480p"]["x"] == (2, 7410, 3072) and lnm["720p"]["x"] == (2, 27280, 3072)
    # x and out in bf16, shift and scale in FP32
    assert kernels.bytes_moved("layernorm_modulate", lnm["720p"]) == 2 * 27280 * 3072 * (2 + 2 + 4 + 4)
    rope = kernels.SHAPES["rmsnorm_rope"]["720p"]
    assert rope["freqs_cos"] == (1, 27280, 1, 128) and kernels.HEADS * 128 == rope["x"][2]
    vae = kernels.SHAPES["rms_norm_silu"]
    assert vae["720p/up3+head"]["x"] == (1, 256, 4, 704 // 2, 1280 // 2)  # before unpatchify
    assert vae["480p/mid+up0"]["x"] == (1, 1024, 1, 30, 52)
    assert kernels.bytes_moved("rms_norm_silu", vae["720p/up3+head"], torch.float32) == \
        (2 * 256 * 4 * 352 * 640 + 256) * 4
    with pytest.raises(ValueError, match="choose one of"):
        kernels.bytes_moved("softmax", {"x": (1,)})
