"""First-principles (roofline) cost of one video on hardware we have not measured.

FLOPs are counted from the preset configs (2 FLOPs per multiply-add, matmuls and convs only;
norms, activations, RoPE and softmax are left out, they are memory-bound and small), then
divided by a datasheet peak times an assumed utilisation. Everything here is an estimate.

The DiT's share is its per-forward cost times the forwards one video spends, which the
sampling mode decides (`DitSchedule`): steps x 2 with CFG, fewer with a guidance interval or a
step cache, a few without CFG for a step-distilled model.
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


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


@dataclass(frozen=True)
class DitSchedule:
    """DiT forwards one video spends (batch rows: a CFG step is 2), as a sampling mode spends
    them, and where the figure comes from."""
    mode: str  # "base", "cached", "distilled" or "given"
    steps: int
    forwards: float  # may be fractional: a measured mean over requests
    prompts: int  # through the text encoder: 2 when any step runs CFG (the negative prompt)
    basis: str  # printed with the estimate: counted, measured or assumed

    @classmethod
    def base(cls, steps: int, cfg: bool = True, cfg_interval: float | None = None) -> "DitSchedule":
        """`cfg_interval` F: CFG on the first F of the steps only (the served guidance
        interval [0, F]), the conditional pass alone after it."""
        steps = _positive_int("steps", steps)
        if cfg_interval is None:
            n = steps if cfg else 0
            basis = f"{steps} steps x {2 if cfg else 1}" + (" (CFG)" if cfg else " (no CFG)")
        else:
            if not cfg:
                raise ValueError("a CFG interval needs CFG: give the interval or no CFG, not both")
            if isinstance(cfg_interval, bool) or not isinstance(cfg_interval, numbers.Real) \
                    or not 0 < cfg_interval <= 1:
                raise ValueError(f"the CFG interval must be a fraction of the steps in (0, 1], "
                                 f"got {cfg_interval!r}")
            n = min(steps, math.ceil(cfg_interval * steps))  # steps i < F * steps
            basis = f"{steps} steps, CFG on the first {n} (interval {cfg_interval:g})"
        return cls("base", steps, float(steps + n), 2 if cfg else 1, basis)

    @classmethod
    def cached(cls, steps: int, saving: float, cfg: bool = True,
               cfg_interval: float | None = None, basis: str = "") -> "DitSchedule":
        """The base mode's forwards divided by `saving` (x fewer forwards: the steps the cache
        serves skip every pass of that step). `basis` says whether it was measured."""
        if isinstance(saving, bool) or not isinstance(saving, numbers.Real) \
                or not math.isfinite(saving) or saving < 1:
            raise ValueError(f"cache saving must be a factor >= 1 (2 = half the DiT forwards), "
                             f"got {saving!r}")
        b = cls.base(steps, cfg, cfg_interval)
        return cls("cached", b.steps, b.forwards / saving, b.prompts,
                   f"{b.basis} / {saving:.3g} ({basis or 'cache saving given'})")

    @classmethod
    def distilled(cls, steps: int = 4, basis: str = "") -> "DitSchedule":
        steps = _positive_int("distilled steps", steps)
        return cls("distilled", steps, float(steps), 1,
                   f"{steps} steps x 1 (step-distilled, no CFG{'; ' + basis if basis else ''})")

    @classmethod
    def given(cls, forwards: float, steps: int, cfg: bool = True, basis: str = "") -> "DitSchedule":
        if isinstance(forwards, bool) or not isinstance(forwards, numbers.Real) \
                or not math.isfinite(forwards) or forwards <= 0:
            raise ValueError(f"DiT forwards per video must be > 0, got {forwards!r}")
        return cls("given", _positive_int("steps", steps), float(forwards), 2 if cfg else 1,
                   f"{forwards:g} forwards ({basis or 'given'})")


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
    mode: str = "base"
    dit_forwards: float = 0.0  # per video
    forwards_basis: str = ""

    @property
    def vae_share(self) -> float:
        """Share of a video's time in the VAE decode; it grows as the DiT forwards drop."""
        return self.seconds["vae_decode"] / self.seconds["total"]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["assumptions"] = list(self.assumptions)
        d["vae_share"] = self.vae_share
        return d


def _peak(gpu) -> tuple[str, float, str]:
    if isinstance(gpu, str):
        if gpu not in GPU_PEAKS:
            raise ValueError(f"unknown gpu {gpu!r}; known: {sorted(GPU_PEAKS)} (or pass a peak in TFLOP/s)")
        return gpu, GPU_PEAKS[gpu].tflops, GPU_PEAKS[gpu].note
    if isinstance(gpu, bool) or not isinstance(gpu, numbers.Real) or not math.isfinite(gpu) or gpu <= 0:
        raise ValueError(f"gpu must be a name from GPU_PEAKS or a positive peak in TFLOP/s, got {gpu!r}")
    return f"{float(gpu):g} TFLOP/s", float(gpu), "peak given by the caller"


def estimate_video(gpu: str | float, width: int, height: int, frames: int,
                   steps: int | None = None, *, cfg: bool = True, utilisation: float = 0.40,
                   preset: str = "wan2.2-ti2v-5b", text_len: int | None = None,
                   schedule: DitSchedule | None = None) -> Estimate:
    """`steps` and `cfg` are the base mode's; `schedule` any mode's forwards instead."""
    name, peak, note = _peak(gpu)
    if isinstance(utilisation, bool) or not isinstance(utilisation, numbers.Real) or not 0 < utilisation <= 1:
        raise ValueError(f"utilisation must be in (0, 1], got {utilisation!r}")
    if schedule is None:
        schedule = DitSchedule.base(steps, cfg)
    elif steps is not None:
        raise ValueError("give steps (the base mode) or a schedule, not both")
    p = get_preset(preset)
    tl = p.text_len if text_len is None else text_len
    if isinstance(tl, bool) or not isinstance(tl, numbers.Integral) or tl < 1:
        raise ValueError(f"text_len must be a positive int, got {text_len!r}")
    tokens = dit_tokens(width, height, frames, preset)
    prompts, forwards = schedule.prompts, schedule.forwards  # prompts: + the negative one for CFG
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
        width=width, height=height, frames=frames, steps=schedule.steps, cfg=prompts == 2,
        tokens=tokens, text_len=tl, flops=flops, seconds=seconds,
        seconds_per_video=seconds["total"], videos_per_gpu_hour=3600.0 / seconds["total"],
        assumptions=(
            f"peak {peak:g} TFLOP/s ({note})",
            f"utilisation {utilisation:.0%} of peak for every component",
            f"DiT: {schedule.basis} = {forwards:g} forwards at {tokens} tokens, text {tl} tokens",
            "matmul/conv FLOPs only; no overlap, no host, scheduler or encode time",
        ),
        mode=schedule.mode, dit_forwards=forwards, forwards_basis=schedule.basis,
    )


def _num(x: float) -> str:
    # readable at both sizes: 52,066 TFLOP for the 5B, 0.000123 for the tiny preset
    return f"{x:,.0f}" if x >= 1000 else f"{x:,.1f}" if x >= 1 else f"{x:.3g}"


def format_estimate(e: Estimate) -> str:
    plain = e.mode == "base" and e.dit_forwards == e.steps * (2 if e.cfg else 1)
    dit = f"{e.steps} steps x {2 if e.cfg else 1}" if plain else f"{e.dit_forwards:g} forwards"
    rows = [
        (f"text encoder ({2 if e.cfg else 1} prompt{'s' if e.cfg else ''})", "text_encoder"),
        (f"DiT ({dit})", "dit"),
        ("VAE decode", "vae_decode"),
        ("**total**", "total"),
    ]
    mode = "" if e.mode == "base" else f"{e.mode} mode, "
    lines = [
        f"**{e.preset} {e.width}x{e.height}x{e.frames}, {mode}{e.steps} steps, CFG "
        f"{'on' if e.cfg else 'off'}, {e.gpu} at {e.utilisation:.0%}** - {e.label}",
        "",
        "| component | TFLOP | seconds | share |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {label} | {_num(e.flops[k] / 1e12)} | {_num(e.seconds[k])} | "
              f"{e.seconds[k] / e.seconds['total']:.1%} |" for label, k in rows]
    lines += ["", f"{_num(e.videos_per_gpu_hour)} videos per GPU-hour. Assumes: "
              + "; ".join(e.assumptions) + "."]
    return "\n".join(lines)
