"""First-principles (roofline) cost of one video on hardware we have not measured.

FLOPs are counted from the preset configs (2 FLOPs per multiply-add, matmuls and convs only;
norms, activations, RoPE and softmax are left out, they are memory-bound and small), then
divided by a datasheet peak times an assumed utilisation. Everything here is an estimate.
"""

import functools
import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

from t2vserve.presets import get_preset

LABEL = "estimate (roofline, not measured)"


class GpuPeak(NamedTuple):
    tflops: float  # dense BF16/FP16 tensor-core peak, TFLOP/s
    note: str


# Vendor datasheets, dense (the headline figures are often "with sparsity", 2x these).
GPU_PEAKS = {
    "h100-sxm": GpuPeak(989.0, "NVIDIA H100 SXM5 datasheet, BF16 dense (1979 with sparsity)"),
    "h100-pcie": GpuPeak(756.0, "NVIDIA H100 PCIe datasheet, BF16 dense (1513 with sparsity)"),
    "h100-nvl": GpuPeak(835.0, "NVIDIA H100 NVL datasheet, BF16 dense (1671 with sparsity)"),
    "h200": GpuPeak(989.0, "NVIDIA H200 SXM datasheet, BF16 dense (1979 with sparsity)"),
    "a100": GpuPeak(312.0, "NVIDIA A100 SXM/PCIe datasheet, BF16 dense (624 with sparsity)"),
    "l40s": GpuPeak(362.0, "NVIDIA L40S datasheet, BF16 dense (733 with sparsity)"),
    "l4": GpuPeak(121.0, "NVIDIA L4 datasheet, BF16 dense (242 with sparsity)"),
    "a10": GpuPeak(125.0, "NVIDIA A10 datasheet, BF16 dense (250 with sparsity)"),
    "b200": GpuPeak(2250.0, "NVIDIA HGX B200 datasheet, BF16 dense per GPU (4500 with sparsity)"),
    "mi300x": GpuPeak(1307.0, "AMD Instinct MI300X datasheet, BF16 dense (2615 with sparsity)"),
}


def _latent_grid(width, height, frames, preset, spatial, temporal):
    # (latent frames, latent height, latent width) for a video the given strides allow
    for name, v in (("width", width), ("height", height), ("frames", frames)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if width % spatial or height % spatial:
        raise ValueError(
            f"width and height must be multiples of {spatial} for preset {preset!r}, got {width}x{height}"
        )
    if (frames - 1) % temporal:
        raise ValueError(
            f"frames must be {temporal}k+1 (1, {temporal + 1}, {2 * temporal + 1}, ...), got {frames}"
        )
    return (frames - 1) // temporal + 1, height // spatial, width // spatial


def dit_tokens(width: int, height: int, frames: int, preset: str = "wan2.2-ti2v-5b") -> int:
    p = get_preset(preset)
    pt, ph, pw = p.dit["patch_size"]
    if ph != pw:
        raise ValueError(f"non-square spatial patch {p.dit['patch_size']} is not supported")
    spatial = p.vae["scale_factor_spatial"] * ph
    t, h, w = _latent_grid(width, height, frames, preset, spatial, p.vae["scale_factor_temporal"])
    if t % pt:
        raise ValueError(f"latent frames ({t}) must be a multiple of the temporal patch {pt}")
    return t // pt * h * w


def dit_forward_flops(tokens: int, preset: str = "wan2.2-ti2v-5b", text_len: int | None = None,
                      batch: int = 1) -> dict:
    p = get_preset(preset)
    c = p.dit
    L, T = tokens, p.text_len if text_len is None else text_len
    d = c["num_attention_heads"] * c["attention_head_dim"]  # Wan's model width is the attention width
    F, n = c["ffn_dim"], c["num_layers"]
    patch = math.prod(c["patch_size"])
    layer = {
        "self_attn_proj": 8 * L * d * d,  # q, k, v, out
        "self_attn_scores": 4 * L * L * d,  # QK^T and PV
        "cross_attn_proj": 4 * L * d * d + 4 * T * d * d,  # q, out over video; k, v over text
        "cross_attn_scores": 4 * L * T * d,
        "ffn": 4 * L * d * F,
    }
    out = {k: v * n * batch for k, v in layer.items()}
    out["patch_embed"] = 2 * L * c["in_channels"] * patch * d * batch
    # Wan2.2 TI2V gives every token its own timestep, so the time MLP and the 6-way
    # modulation projection run over L rows, not one row per sample.
    out["time_embed"] = 2 * L * (c["freq_dim"] * d + d * d + d * 6 * d) * batch
    out["text_embed"] = 2 * T * (c["text_dim"] * d + d * d) * batch
    out["head"] = 2 * L * d * c["out_channels"] * patch * batch
    out["total"] = sum(out.values())
    return out


def text_encoder_flops(text_len: int, preset: str = "wan2.2-ti2v-5b") -> int:
    # one prompt, padded to text_len; the embedding lookup and relative-position bias are not matmuls
    c = get_preset(preset).text_encoder
    inner = c["num_heads"] * c["d_kv"]
    ffn_mats = 3 if c["feed_forward_proj"].startswith("gated") else 2
    matmul_params = 4 * c["d_model"] * inner + ffn_mats * c["d_model"] * c["d_ff"]
    per_layer = 2 * matmul_params * text_len + 4 * text_len * text_len * inner
    return per_layer * c["num_layers"]


@functools.lru_cache(maxsize=None)
def _meta_vae(preset: str):
    import torch
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        return AutoencoderKLWan(**get_preset(preset).vae).eval()


@functools.lru_cache(maxsize=None)
def _count_decode(preset: str, t: int, h: int, w: int) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.zeros(1, get_preset(preset).vae["z_dim"], t, h, w, device="meta")
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        _meta_vae(preset).decode(z)
    return fc.get_total_flops()


@functools.lru_cache(maxsize=None)
def _decode_first_and_step(preset: str, h: int, w: int) -> tuple[int, int]:
    # Meta tensors cost nothing, so count at the real latent size: the decoder's mid-block
    # attention is quadratic in h*w and would be missed by scaling a small area. In time the
    # decode is causal: the first latent frame (no temporal upsampling) costs less than each
    # later one, and every later one costs the same.
    first = _count_decode(preset, 1, h, w)
    return first, _count_decode(preset, 2, h, w) - first


def vae_decode_flops(width: int, height: int, frames: int, preset: str = "wan2.2-ti2v-5b") -> int:
    v = get_preset(preset).vae
    t, h, w = _latent_grid(width, height, frames, preset, v["scale_factor_spatial"],
                           v["scale_factor_temporal"])
    first, step = _decode_first_and_step(preset, h, w)
    return first + (t - 1) * step


@dataclass(frozen=True)
class Estimate:
    gpu: str
    peak_tflops: float
    utilisation: float
    preset: str
    width: int
    height: int
    frames: int
    steps: int
    cfg: bool
    tokens: int
    text_len: int
    flops: dict  # text_encoder, dit, vae_decode, total
    seconds: dict  # same keys
    seconds_per_video: float
    videos_per_gpu_hour: float
    assumptions: tuple = field(default=())
    label: str = LABEL

    def to_dict(self) -> dict:
        d = asdict(self)
        d["assumptions"] = list(self.assumptions)
        return d


def _peak(gpu) -> tuple[str, float, str]:
    if isinstance(gpu, str):
        if gpu not in GPU_PEAKS:
            raise ValueError(f"unknown gpu {gpu!r}; known: {sorted(GPU_PEAKS)} (or pass a peak in TFLOP/s)")
        return gpu, GPU_PEAKS[gpu].tflops, GPU_PEAKS[gpu].note
    if isinstance(gpu, bool) or not isinstance(gpu, numbers.Real) or not math.isfinite(gpu) or gpu <= 0:
        raise ValueError(f"gpu must be a name from GPU_PEAKS or a positive peak in TFLOP/s, got {gpu!r}")
    return f"{float(gpu):g} TFLOP/s", float(gpu), "peak given by the caller"


def estimate_video(gpu: str | float, width: int, height: int, frames: int, steps: int, *,
                   cfg: bool = True, utilisation: float = 0.40, preset: str = "wan2.2-ti2v-5b",
                   text_len: int | None = None) -> Estimate:
    name, peak, note = _peak(gpu)
    if isinstance(utilisation, bool) or not isinstance(utilisation, numbers.Real) or not 0 < utilisation <= 1:
        raise ValueError(f"utilisation must be in (0, 1], got {utilisation!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    p = get_preset(preset)
    tl = p.text_len if text_len is None else text_len
    if isinstance(tl, bool) or not isinstance(tl, numbers.Integral) or tl < 1:
        raise ValueError(f"text_len must be a positive int, got {text_len!r}")
    tokens = dit_tokens(width, height, frames, preset)
    prompts = 2 if cfg else 1  # prompt + negative prompt
    forwards = steps * prompts  # CFG: cond + uncond every step
    flops = {
        "text_encoder": prompts * text_encoder_flops(tl, preset),
        "dit": forwards * dit_forward_flops(tokens, preset, tl)["total"],
        "vae_decode": vae_decode_flops(width, height, frames, preset),
    }
    flops["total"] = sum(flops.values())
    rate = peak * 1e12 * float(utilisation)
    seconds = {k: v / rate for k, v in flops.items()}
    return Estimate(
        gpu=name, peak_tflops=peak, utilisation=float(utilisation), preset=preset,
        width=width, height=height, frames=frames, steps=steps, cfg=cfg, tokens=tokens,
        text_len=tl, flops=flops, seconds=seconds, seconds_per_video=seconds["total"],
        videos_per_gpu_hour=3600.0 / seconds["total"],
        assumptions=(
            f"peak {peak:g} TFLOP/s ({note})",
            f"utilisation {utilisation:.0%} of peak for every component",
            f"DiT: {steps} steps x {prompts} forward(s) at {tokens} tokens, text {tl} tokens",
            "matmul/conv FLOPs only; no overlap, no host, scheduler or encode time",
        ),
    )


def _num(x: float) -> str:
    # readable at both sizes: 52,066 TFLOP for the 5B, 0.000123 for the tiny preset
    return f"{x:,.0f}" if x >= 1000 else f"{x:,.1f}" if x >= 1 else f"{x:.3g}"


def format_estimate(e: Estimate) -> str:
    rows = [
        (f"text encoder ({2 if e.cfg else 1} prompt{'s' if e.cfg else ''})", "text_encoder"),
        (f"DiT ({e.steps} steps x {2 if e.cfg else 1})", "dit"),
        ("VAE decode", "vae_decode"),
        ("**total**", "total"),
    ]
    lines = [
        f"**{e.preset} {e.width}x{e.height}x{e.frames}, {e.steps} steps, CFG {'on' if e.cfg else 'off'}, "
        f"{e.gpu} at {e.utilisation:.0%}** - {e.label}",
        "",
        "| component | TFLOP | seconds |",
        "|---|---:|---:|",
    ]
    lines += [f"| {label} | {_num(e.flops[k] / 1e12)} | {_num(e.seconds[k])} |" for label, k in rows]
    lines += ["", f"{_num(e.videos_per_gpu_hour)} videos per GPU-hour. Assumes: "
              + "; ".join(e.assumptions) + "."]
    return "\n".join(lines)
