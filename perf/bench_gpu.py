"""`t2vserve bench gpu`: latency of each network here, as TFLOP/s and MFU (as nanoGPT's
estimate_mfu) against a matmul peak measured in the same run and the datasheet peak.

The DiT runs "ours" (the server's export wrapper, SDPA, optional compile / CUDA graphs) and
"baseline" (diffusers' eager forward) on the same random weights and inputs, and the outputs
are compared, so a speedup cannot come from computing something else.
"""

import datetime as dt
import gc
import importlib.util
import json
import platform
import re
import time
from pathlib import Path

import torch

from t2vserve import pipeline
from t2vserve.perf.roofline import (
    GPU_PEAKS, dit_forward_flops, dit_tokens, text_encoder_flops, vae_decode_flops,
)
from t2vserve.presets import get_preset
from t2vserve.runners import to_host
from t2vserve.runners.torch_cuda import DTYPES, CudaTorchRunner, use_sdpa_attention

SHAPES = {  # (width, height, frames)
    "tiny": ((128, 128, 17), (192, 128, 33)),
    "wan2.2-ti2v-5b": ((832, 480, 73), (1280, 704, 121)),
}
BATCH = 2  # classifier-free guidance: prompt and negative prompt share one DiT call
CPU_MAX_FLOP = 1e12  # one DiT forward above this takes minutes on a CPU
TIMESTEP = 500.0


def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def datasheet_peak(gpu_name: str | None):
    """(GPU_PEAKS key, GpuPeak) for a CUDA device name, or None when unknown."""
    n = (gpu_name or "").lower()
    if "h100" in n:
        key = "h100-pcie" if "pcie" in n else "h100-nvl" if "nvl" in n else "h100-sxm"
    else:
        # order matters: "l40s" before "l4", "a100" before "a10"
        key = next((k for k, pat in (("h200", r"h200"), ("b200", r"b200"), ("a100", r"a100"),
                                      ("l40s", r"l40s"), ("l4", r"\bl4\b"), ("a10", r"\ba10\b"),
                                      ("mi300x", r"mi300x")) if re.search(pat, n)), None)
    return (key, GPU_PEAKS[key]) if key else None


def estimate_mfu(flops: float, seconds: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over peak FLOP/s."""
    return flops / seconds / (peak_tflops * 1e12)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, repeats: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"median_s": times[len(times) // 2], "min_s": times[0], "repeats": repeats}


def matmul_peak(device, dtype, sizes=None, log=print) -> dict:
    """Best TFLOP/s of square matmuls in `dtype`: what this device sustains on dense GEMM."""
    sizes = sizes or ((4096, 8192, 16384) if device.type == "cuda" else (256, 512, 1024))
    block_s = 0.2 if device.type == "cuda" else 0.05  # long enough to hide launch overhead
    by_size = {}
    for n in sizes:
        g = torch.Generator(device).manual_seed(n)
        a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        c = torch.empty_like(a)  # out=: no allocator work inside the timed loop
        t = _time(lambda: torch.matmul(a, b, out=c), device, repeats=1, warmup=1)["median_s"]
        iters = max(1, min(200, int(block_s / max(t, 1e-6))))

        def block_fn():
            for _ in range(iters):
                torch.matmul(a, b, out=c)
        # the best of several blocks: on a shared CPU one block can land in a busy moment
        block = _time(block_fn, device, repeats=3 if device.type == "cuda" else 6, warmup=0)
        by_size[n] = 2 * n**3 * iters / block["min_s"] / 1e12
        log(f"  matmul {n}x{n} {str(dtype).removeprefix('torch.')}: {by_size[n]:,.2f} TFLOP/s")
    return {"tflops": max(by_size.values()), "by_size": by_size}


def _build(part: str, preset, device, dtype):
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    with torch.device(device):
        if part == "dit":
            m = WanTransformer3DModel(**preset.dit)
        elif part == "vae":
            m = AutoencoderKLWan(**preset.vae)
        else:
            config = UMT5Config(**preset.text_encoder)
            config._attn_implementation = "eager"  # what the server's text encoder runs
            m = UMT5EncoderModel(config)
    m.eval().requires_grad_(False)
    if str(device) != "meta":
        _init_(m, seed={"text_encoder": 0, "dit": 1, "vae": 2}[part])
        # Cast everything, as build_components does (nn.Module.to: diffusers' own .to
        # warns about its keep-in-FP32 list, which only from_pretrained honours).
        torch.nn.Module.to(m, dtype=dtype)
    return m


@torch.no_grad()
def _init_(module, seed: int) -> None:
    # presets' rule (no zero projections, so outputs are not trivially zero), drawn on the
    # device: a CPU generator takes minutes for the 5B DiT and umT5-XXL.
    g = torch.Generator(next(module.parameters()).device).manual_seed(seed)
    for name, p in sorted(module.named_parameters()):
        if p.ndim == 1 and ("norm" in name or name.endswith(".gamma")):
            p.normal_(1.0, 0.1, generator=g)
        else:
            p.normal_(0.0, (p[0].numel() if p.ndim > 1 else p.numel()) ** -0.5, generator=g)


def _latent_dims(preset, w, h, f) -> tuple:
    t, s = preset.vae["scale_factor_temporal"], preset.vae["scale_factor_spatial"]
    return preset.vae["z_dim"], (f - 1) // t + 1, h // s, w // s


def _free(device) -> None:
    torch._dynamo.reset()  # compiled graphs' caches can keep the last network alive
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _check_fits(preset, device, dtype, shapes) -> None:
    if device.type == "cpu":
        tokens = min(dit_tokens(w, h, f, preset.name) for w, h, f in shapes)
        flop = dit_forward_flops(tokens, preset.name, batch=BATCH)["total"]
        if flop > CPU_MAX_FLOP:
            raise ValueError(
                f"preset {preset.name!r} is too big for the CPU: one DiT forward at {tokens:,} "
                f"tokens is {flop / 1e12:,.0f} TFLOP (minutes per call here); use --preset tiny, "
                f"or run on a GPU")
    elif device.type == "cuda":
        # built in FP32, then cast: 4 + dtype bytes per parameter of the largest network
        params = max(sum(p.numel() for p in _build(part, preset, "meta", dtype).parameters())
                     for part in ("text_encoder", "dit"))
        need = params * (4 + torch.finfo(dtype).bits // 8)
        total = torch.cuda.get_device_properties(device).total_memory
        if need > 0.9 * total:
            raise ValueError(
                f"preset {preset.name!r} is too big for {torch.cuda.get_device_name(device)}: "
                f"building its largest network needs ~{need / 2**30:.0f} GiB of "
                f"{total / 2**30:.0f} GiB; use --preset tiny or a larger GPU")


def _figures(flops: float, timing: dict, peaks: dict) -> dict:
    out = dict(timing, latency_ms=timing["median_s"] * 1e3,
               tflops=flops / timing["median_s"] / 1e12)
    for label, peak in peaks.items():
        out[f"mfu_{label}"] = estimate_mfu(flops, timing["median_s"], peak)
    return out


def _compare(ours: torch.Tensor, ref: torch.Tensor) -> dict:
    ours, ref = ours.float(), ref.float()
    max_abs = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    return {"max_abs": max_abs, "max_rel": max_abs / scale if scale else float("inf"),
            "finite": bool(torch.isfinite(ours).all() and torch.isfinite(ref).all())}


def _baseline_processor():
    try:
        from diffusers.models.transformers.transformer_wan import WanAttnProcessor
    except ImportError as exc:
        return None, f"diffusers' WanAttnProcessor is not importable: {exc}"
    return WanAttnProcessor, None


def _bench_dit(preset, device, dtype_name, shapes, peaks, *, repeats, warmup, compile,
               cuda_graphs, baseline, log) -> tuple[list, dict]:
    from t2vserve.export.wrappers import DiTExport

    dtype = DTYPES[dtype_name]
    transformer = _build("dit", preset, device, dtype)
    p = preset.dit
    g = torch.Generator("cpu").manual_seed(0)
    rows, inputs = [], []
    for w, h, f in shapes:
        tokens = dit_tokens(w, h, f, preset.name)
        lat = (BATCH, *_latent_dims(preset, w, h, f))
        inputs.append(tuple(x.to(device) for x in (
            torch.randn(lat, generator=g), torch.full((BATCH,), TIMESTEP),
            torch.randn(BATCH, preset.text_len, p["text_dim"], generator=g))))
        rows.append({"width": w, "height": h, "frames": f, "tokens": tokens, "batch": BATCH,
                     "text_len": preset.text_len,
                     "flops": dit_forward_flops(tokens, preset.name, preset.text_len, BATCH)["total"]})

    processor, reason = _baseline_processor() if baseline else (None, "disabled (--no-baseline)")
    refs = []
    if processor is not None:
        # All baseline runs first, while the blocks hold diffusers' processors: swapping
        # processors under a compiled "ours" would invalidate its guards.
        for block in transformer.blocks:
            block.attn1.set_processor(processor())
            block.attn2.set_processor(processor())
        for row, (lat, t, emb) in zip(rows, inputs):
            per_token = t.unsqueeze(1).expand(BATCH, row["tokens"])
            emb_d = emb.to(dtype)

            def call(lat=lat.to(dtype), per_token=per_token, emb_d=emb_d):
                with torch.inference_mode():
                    return transformer(hidden_states=lat, timestep=per_token,
                                       encoder_hidden_states=emb_d, return_dict=False)[0]
            refs.append(call())
            row["baseline"] = _figures(row["flops"], _time(call, device, repeats, warmup), peaks)
            log(f"  DiT baseline {row['tokens']:,} tokens: {row['baseline']['latency_ms']:,.1f} ms, "
                f"{row['baseline']['tflops']:,.2f} TFLOP/s")

    dit = DiTExport(transformer)
    use_sdpa_attention(transformer)
    runner = CudaTorchRunner(dit, ["latents", "timestep", "prompt_embeds"], ["noise_pred"],
                             device=str(device), dtype=dtype_name, compile=compile,
                             cuda_graphs=cuda_graphs)
    for i, (row, args) in enumerate(zip(rows, inputs)):
        t0 = time.perf_counter()
        out = runner.forward(*args)[0]  # compiles / captures this shape's graph
        _sync(device)
        row["ours_first_call_s"] = time.perf_counter() - t0
        row["ours"] = _figures(row["flops"], _time(lambda: runner.forward(*args), device,
                                                   repeats, warmup), peaks)
        host = {n: a.cpu() for n, a in zip(runner.input_names, args)}
        # what a call pays on top when its inputs and output cross to and from the host (the
        # denoise loop's per-step crossing: its scheduler runs in numpy)
        row["ours_with_host_copies_ms"] = _time(
            lambda: to_host(runner.run(host)["noise_pred"]), device, min(repeats, 3),
            1)["median_s"] * 1e3
        if refs:
            row["speedup"] = row["baseline"]["median_s"] / row["ours"]["median_s"]
            row["check"] = _compare(out, refs[i])
        log(f"  DiT ours {row['tokens']:,} tokens: {row['ours']['latency_ms']:,.1f} ms, "
            f"{row['ours']['tflops']:,.2f} TFLOP/s"
            + (f", {row['speedup']:.2f}x baseline, max rel err {row['check']['max_rel']:.1e}"
               if refs else ""))
    baseline_info = {"available": bool(refs), "reason": reason,
                     "what": "diffusers WanTransformer3DModel.forward, eager, WanAttnProcessor "
                             "(dispatch_attention_fn, native SDPA)"}
    return rows, baseline_info


def _bench_vae(preset, device, dtype_name, shapes, peaks, *, repeats, warmup, log) -> list:
    from t2vserve.export.vae_chunked import cache_shapes

    vae = _build("vae", preset, device, DTYPES[dtype_name])
    mean, std = vae.config.latents_mean, vae.config.latents_std
    # eager: the decode is conv-bound; the loop (and the uint8 conversion) is the server's
    first, step = pipeline.vae_runners(vae, CudaTorchRunner, device=str(device), dtype=dtype_name)
    rows = []
    for w, h, f in shapes:  # one sample, as the server decodes
        z = torch.randn(1, *_latent_dims(preset, w, h, f),
                        generator=torch.Generator("cpu").manual_seed(1)).to(device)
        cache_bytes = sum(4 * torch.Size(s).numel() for s in cache_shapes(vae, 1, *z.shape[3:]))
        timing = _time(lambda: pipeline.decode_frames(first, step, z, mean, std), device,
                       min(repeats, 3), min(warmup, 1))
        flops = vae_decode_flops(w, h, f, preset.name)
        row = {"width": w, "height": h, "frames": f, "batch": 1, "flops": flops,
               "cache_bytes_per_step": cache_bytes, **_figures(flops, timing, peaks)}
        rows.append(row)
        log(f"  VAE decode {w}x{h}x{f}: {row['latency_ms']:,.1f} ms, {row['tflops']:,.2f} TFLOP/s")
    return rows


def _bench_text(preset, device, dtype_name, peaks, *, repeats, warmup, log) -> dict:
    from t2vserve.export.wrappers import TextEncoderExport

    te = _build("text_encoder", preset, device, DTYPES[dtype_name])
    runner = CudaTorchRunner(TextEncoderExport(te), ["input_ids", "attention_mask"],
                             ["prompt_embeds"], device=str(device), dtype=dtype_name)
    L = preset.text_len
    ids = torch.randint(1, preset.text_encoder["vocab_size"], (BATCH, L),
                        generator=torch.Generator("cpu").manual_seed(2))
    # a prompt and a shorter negative prompt, right-padded to text_len as WanPipeline pads
    mask = (torch.arange(L) < torch.tensor([[min(L, 48)], [min(L, 16)]])).long()
    args = ((ids * mask).to(device), mask.to(device))
    flops = BATCH * text_encoder_flops(L, preset.name)
    row = {"batch": BATCH, "text_len": L, "flops": flops,
           **_figures(flops, _time(lambda: runner.forward(*args), device, repeats, warmup), peaks)}
    log(f"  umT5 encode 2x{L}: {row['latency_ms']:,.1f} ms, {row['tflops']:,.2f} TFLOP/s")
    return row


def _machine() -> dict:
    try:
        from t2vserve.perf.run import machine
        return machine()
    except ImportError:  # a bare GPU machine may lack the serving stack's dependencies
        return {"host": platform.node(), "python": platform.python_version()}


def run_bench(preset: str = "wan2.2-ti2v-5b", device: str | None = None, dtype: str | None = None,
              shapes=None, repeats: int = 5, warmup: int = 2, compile: bool = False,
              cuda_graphs: bool = False, baseline: bool = True, log=print) -> dict:
    """Measure the matmul peak, the DiT (ours and baseline), VAE decode and umT5 encode.

    dtype None: bf16 on CUDA, fp32 on CPU. shapes: (width, height, frames) tuples.
    """
    p = get_preset(preset)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} requested but CUDA is not available")
    dtype = dtype or ("bf16" if dev.type == "cuda" else "fp32")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if cuda_graphs and dev.type != "cuda":
        raise ValueError(f"cuda_graphs needs a CUDA device, got device {str(dev)!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    shapes = [tuple(s) for s in (shapes or SHAPES.get(preset) or ())]
    if not shapes:
        raise ValueError(f"no default shapes for preset {preset!r}; pass shapes=[(w, h, frames)]")
    if importlib.util.find_spec("diffusers") is None:
        # "ours" is diffusers' WanTransformer3DModel too, behind our wrapper and processor
        raise ValueError("bench gpu builds the networks from diffusers' classes and diffusers is "
                         "not installed: pip install diffusers==0.42.1")
    _check_fits(p, dev, DTYPES[dtype], shapes)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    log(f"bench {preset} on {name}, {dtype}, compile={compile}, cuda_graphs={cuda_graphs}")

    log("matmul peak:")
    peak = matmul_peak(dev, DTYPES[dtype], log=log)
    peaks = {"measured": peak["tflops"]}
    sheet = datasheet_peak(name) if dev.type == "cuda" else None
    if sheet and dtype != "fp32":  # the datasheet figure is the BF16/FP16 tensor-core peak
        peaks["datasheet"] = sheet[1].tflops
    memory = {}  # peak GiB allocated per stage (CUDA), to show what fits beside what

    def stage(label, fn):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        out = fn()
        _free(dev)  # the stage's network is garbage now; the next one gets its memory
        if dev.type == "cuda":
            memory[label] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
        return out

    log("DiT forward, batch 2 (CFG):")
    dit, baseline_info = stage("dit", lambda: _bench_dit(
        p, dev, dtype, shapes, peaks, repeats=repeats, warmup=warmup, compile=compile,
        cuda_graphs=cuda_graphs, baseline=baseline, log=log))
    log("VAE decode, one sample, one latent frame per call:")
    vae = stage("vae_decode", lambda: _bench_vae(p, dev, dtype, shapes, peaks, repeats=repeats,
                                                 warmup=warmup, log=log))
    log("text encoder:")
    text = stage("text_encoder", lambda: _bench_text(p, dev, dtype, peaks, repeats=repeats,
                                                     warmup=warmup, log=log))

    notes = [
        "latency: median of the repeats, device synchronised, inputs already on the device",
        "FLOPs: perf.roofline (matmuls and convs); MFU = FLOPs / latency / peak",
        "ours: DiTExport with SDPA attention at every dtype (the export processor's FP16/BF16 "
        "path materialises the L x L scores)",
        "compile / CUDA graphs apply to the DiT; VAE and text encoder run eagerly",
        "VAE: pipeline.decode_frames, the server's own decode: caches stay on the device "
        "(cache_bytes_per_step each latent frame), uint8 frames made there",
        "weights are random (seeded): FLOPs and time do not depend on them",
    ]
    if dev.type == "cuda" and not sheet:
        notes.append(f"no datasheet peak known for {name!r}")
    return {
        "kind": "t2vserve.bench.gpu",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "device": name, "device_type": dev.type, "machine": _machine(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "dtype": dtype, "preset": preset,
        "compile": compile, "cuda_graphs": cuda_graphs, "repeats": repeats, "warmup": warmup,
        "peak": {"measured_tflops": peak["tflops"], "matmul_by_size": peak["by_size"],
                 "matmul_dtype": dtype,
                 "datasheet": ({"gpu": sheet[0], "tflops": sheet[1].tflops, "note": sheet[1].note}
                               if sheet else None)},
        "baseline": baseline_info, "dit": dit, "vae_decode": vae, "text_encoder": text,
        "peak_memory_gib": memory, "notes": notes,
    }


def _cell(x, fmt) -> str:
    return "-" if x is None else format(x, fmt)


def bench_markdown(r: dict) -> str:
    sheet = r["peak"]["datasheet"]
    peak_line = f"Measured matmul peak **{r['peak']['measured_tflops']:,.2f} TFLOP/s** ({r['dtype']})"
    if sheet:
        peak_line += f"; datasheet {sheet['tflops']:,.0f} TFLOP/s ({sheet['note']})"
    lines = [
        f"# bench gpu: {r['preset']} on {r['device']}, {r['dtype']}",
        "",
        f"{r['date']}, torch {r['torch']}, compile {r['compile']}, CUDA graphs {r['cuda_graphs']}, "
        f"{r['repeats']} repeats. {peak_line}.",
        "",
        "| DiT, batch 2 | tokens | TFLOP | ours ms | TFLOP/s | MFU meas. | MFU sheet "
        "| baseline ms | speedup | max rel err |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d in r["dit"]:
        o, b, c = d["ours"], d.get("baseline"), d.get("check")
        lines.append(
            f"| {d['width']}x{d['height']}x{d['frames']} | {d['tokens']:,} | {d['flops'] / 1e12:.4g} "
            f"| {o['latency_ms']:,.2f} | {o['tflops']:,.3g} | {o['mfu_measured']:.1%} "
            f"| {_cell(o.get('mfu_datasheet'), '.1%')} | {_cell(b and b['latency_ms'], ',.2f')} "
            f"| {_cell(d.get('speedup'), '.2f')} | {_cell(c and c['max_rel'], '.1e')} |")
    if not r["baseline"]["available"]:
        lines += ["", f"Baseline skipped: {r['baseline']['reason']}."]
    lines += ["", "| other | TFLOP | ms | TFLOP/s | MFU meas. | MFU sheet |", "|---|---:|---:|---:|---:|---:|"]
    others = [(f"VAE decode {v['width']}x{v['height']}x{v['frames']}", v) for v in r["vae_decode"]]
    others.append((f"umT5 encode 2x{r['text_encoder']['text_len']}", r["text_encoder"]))
    for label, v in others:
        lines.append(f"| {label} | {v['flops'] / 1e12:.4g} | {v['latency_ms']:,.2f} | {v['tflops']:,.3g} "
                     f"| {v['mfu_measured']:.1%} | {_cell(v.get('mfu_datasheet'), '.1%')} |")
    lines += [""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


def write_bench(result: dict, out_dir: str | Path = "perf/results") -> Path:
    """bench-gpu-<device-slug>-<date>.json and a Markdown summary next to it (gpu-check
    writes gpu-<device-slug>-<date>.*, so the two never overwrite each other)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-gpu-{device_slug(result['device'])}-{result['date'][:10]}.json"
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    path.with_suffix(".md").write_text(bench_markdown(result))
    return path
