"""`t2vserve bench kernels`: the fused Triton kernels (t2vserve.kernels) against their torch
references and `torch.compile` of those references, as time and GB/s against the device's
memory bandwidth, at the 5B's 480P and 720P shapes; then the DiT forward (a few layers at 5B
dims) and the VAE decode with `kernels: triton` and `off`.

Bandwidth is judged against two figures: a device-to-device copy measured in the same run
(what this card sustains) and the datasheet. Bytes are what each kernel must move at least:
every input read once, the output written once.

`--device cpu --interpret` runs the same code at tiny shapes under Triton's interpreter:
how the test suite keeps this script working; its timings mean nothing.
"""

import copy
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import torch

from t2vserve.perf.bench_gpu import (
    BATCH, SHAPES as VIDEO_SHAPES, _free, _init_, _latent_dims, _machine, datasheet_peak,
    device_slug,
)
from t2vserve.perf.roofline import dit_tokens
from t2vserve.presets import get_preset

PRESET = "wan2.2-ti2v-5b"
RESOLUTIONS = dict(zip(("480p", "720p"), VIDEO_SHAPES[PRESET]))  # (width, height, frames)
# datasheet HBM bandwidth, GB/s, keyed as perf.roofline.GPU_PEAKS
DATASHEET_GBS = {"h100-sxm": (3350, "NVIDIA H100 SXM5 datasheet, 3.35 TB/s HBM3"),
                 "h100-pcie": (2000, "NVIDIA H100 PCIe datasheet, 2.0 TB/s HBM2e"),
                 "h100-nvl": (3900, "NVIDIA H100 NVL datasheet, 3.9 TB/s HBM3"),
                 "h200": (4800, "NVIDIA H200 SXM datasheet, 4.8 TB/s HBM3e"),
                 "b200": (8000, "NVIDIA HGX B200 datasheet, 8 TB/s HBM3e per GPU"),
                 "a100": (2039, "NVIDIA A100 80GB SXM datasheet, 2.0 TB/s HBM2e")}
TARGET = 0.8  # issue 25: each fused kernel at >= 80 % of the memory bandwidth at 720P
DIT_LAYERS = 2  # of the 5B's 30: the blocks are identical, so the gain per layer shows
VAE_FRAMES = 17  # 5 latent frames: the decode's per-chunk work at a fraction of the time


def _time_ms(fn, device, repeats: int, warmup: int = 2) -> dict:
    """Median and min milliseconds per call; CUDA events on a GPU."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median_ms": times[len(times) // 2], "min_ms": times[0], "repeats": repeats}


def copy_bandwidth(device, repeats: int, nbytes: int = 2**30) -> dict:
    """A device-to-device copy of `nbytes`: read once, written once."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    t = _time_ms(lambda: dst.copy_(src), device, repeats)
    return {"bytes": 2 * nbytes, "median_ms": t["median_ms"],
            "gbs": 2 * nbytes / (t["median_ms"] * 1e-3) / 1e9}


# --interpret: the same cases at tiny shapes (Triton's interpreter runs one program at a time)
TINY_SHAPES = {
    "layernorm_modulate": {"x": (2, 16, 256), "shift": (2, 16, 256), "scale": (2, 16, 256)},
    "rmsnorm_rope": {"x": (2, 16, 256), "weight": (256,), "freqs_cos": (1, 16, 1, 64),
                     "freqs_sin": (1, 16, 1, 64)},
    "gated_residual": {"x": (2, 16, 256), "y": (2, 16, 256), "gate": (2, 16, 256)},
    "rms_norm_silu": {"x": (1, 16, 4, 16, 16), "gamma": (16, 1, 1, 1)},
}
TINY_HEADS = 4


def kernel_cases(resolution: str) -> list[tuple[str, str, dict]]:
    """(kernel, case, {argument: shape}) at one resolution: t2vserve.kernels.SHAPES (the 5B's
    DiT rows and each VAE decoder site), the AdaLN also per sample (other Wan models' layout;
    Wan2.2 TI2V modulates per token); "tiny" for --interpret."""
    from t2vserve.kernels import SHAPES

    if resolution == "tiny":
        cases = [(name, "tiny", shapes) for name, shapes in TINY_SHAPES.items()]
    else:
        cases = [(name, case, shapes) for name, by_case in SHAPES.items()
                 for case, shapes in by_case.items() if case.split("/")[0] == resolution]
    for name, case, shapes in list(cases):
        if name == "layernorm_modulate":
            b, _, c = shapes["x"]
            per_sample = dict(shapes, shift=(b, 1, c), scale=(b, 1, c))
            cases.append((name, case + " per sample", per_sample))
    return cases


def _arguments(name: str, shapes: dict, heads: int, device, dtype) -> dict:
    """Random arguments: FP32 where the model has them in FP32, RoPE tables from angles."""
    from t2vserve.kernels.shapes import FP32_ARGS

    g = torch.Generator(device).manual_seed(0)
    args = {}
    for arg, shape in shapes.items():
        t = torch.randn(shape, generator=g, device=device,
                        dtype=torch.float32 if arg in FP32_ARGS else dtype)
        args[arg] = 1 + 0.1 * t if arg in ("weight", "gamma") else t
    if name == "rmsnorm_rope":
        angles = args["freqs_cos"][..., 0::2].repeat_interleave(2, -1) * 3.0
        args.update(freqs_cos=angles.cos(), freqs_sin=angles.sin(), heads=heads)
    return args


def _bench_case(name, case, shapes, device, dtype, heads, repeats, warmup, compile, peaks,
                log) -> dict:
    import t2vserve.kernels as kernels
    from t2vserve.kernels import bytes_moved, reference

    fused, ref = getattr(kernels, name), getattr(reference, name + "_ref")
    args = _arguments(name, shapes, heads, device, dtype)
    out, expect = fused(**args), ref(**args)
    nbytes = bytes_moved(name, shapes, dtype)
    row = {"kernel": name, "case": case, "shapes": {k: list(v) for k, v in shapes.items()},
           "dtype": str(dtype).removeprefix("torch."), "bytes": nbytes,
           "max_abs_err": (out.float() - expect.float()).abs().max().item()}

    def figures(t):
        t = dict(t, gbs=nbytes / (t["median_ms"] * 1e-3) / 1e9)
        for label, gbs in peaks.items():
            t[f"of_{label}"] = t["gbs"] / gbs
        return t

    row["triton"] = figures(_time_ms(lambda: fused(**args), device, repeats, warmup))
    row["torch"] = figures(_time_ms(lambda: ref(**args), device, repeats, warmup))
    if compile:
        torch._dynamo.reset()  # a fresh cache per shape: past 8 recompiles dynamo runs eager
        t0 = time.perf_counter()
        compiled = torch.compile(ref, dynamic=False)
        compiled(**args)
        row["compile_s"] = round(time.perf_counter() - t0, 1)
        row["torch_compile"] = figures(_time_ms(lambda: compiled(**args), device, repeats, warmup))
    log(f"  {name} {case}: triton {row['triton']['median_ms']:.3f} ms "
        f"{row['triton']['gbs']:,.0f} GB/s, torch {row['torch']['median_ms']:.3f} ms"
        + (f", compiled {row['torch_compile']['median_ms']:.3f} ms" if compile else ""))
    return row


def _dit(preset, layers, device, dtype):
    from diffusers import WanTransformer3DModel

    with torch.device(device):
        m = WanTransformer3DModel(**dict(preset.dit, num_layers=layers))
    m.eval().requires_grad_(False)
    _init_(m, seed=1)
    return torch.nn.Module.to(m, dtype=dtype)


def _on_off(make, call, device, repeats, warmup, log, label) -> dict:
    """`call(runner)` timed with kernels off and triton, each on its own copy of the network."""
    row, outs = {"what": label}, {}
    for kernels in ("off", "triton"):
        runner = make(kernels)
        outs[kernels] = call(runner)
        row[kernels] = _time_ms(lambda: call(runner), device, repeats, min(warmup, 1))
        del runner
        _free(device)  # the 5B VAE's copies and activations, before the next one
    row["speedup"] = row["off"]["median_ms"] / row["triton"]["median_ms"]
    diff = (outs["triton"].float() - outs["off"].float()).abs().max().item()
    row["max_abs_diff"] = diff
    row["max_rel_diff"] = diff / max(outs["off"].float().abs().max().item(), 1e-30)
    log(f"  {label}: off {row['off']['median_ms']:,.1f} ms, triton "
        f"{row['triton']['median_ms']:,.1f} ms ({row['speedup']:.2f}x), max diff {diff:.2e}")
    return row


def end_to_end(preset_name, shapes, device, dtype_name, repeats, warmup, log,
               layers: int = DIT_LAYERS, vae_frames: int | None = VAE_FRAMES) -> dict:
    """The DiT forward (`layers` layers at the preset's dims, batch 2) and the VAE decode
    (`vae_frames` frames, one sample; None skips it) through CudaTorchRunner, kernels off
    and triton."""
    from t2vserve import pipeline
    from t2vserve.export.wrappers import DiTExport
    from t2vserve.perf.bench_gpu import _build
    from t2vserve.runners.torch_cuda import DTYPES, CudaTorchRunner, use_sdpa_attention

    preset, dtype = get_preset(preset_name), DTYPES[dtype_name]
    layers = min(layers, preset.dit["num_layers"])
    base = _dit(preset, layers, device, dtype)
    rows = {"dit": [], "vae_decode": [], "dit_layers": f"{layers} of {preset.dit['num_layers']}",
            "vae_frames": vae_frames}
    g = torch.Generator("cpu").manual_seed(0)
    for w, h, f in shapes:
        lat = torch.randn(BATCH, *_latent_dims(preset, w, h, f), generator=g).to(device)
        args = (lat, torch.full((BATCH,), 500.0, device=device),
                torch.randn(BATCH, preset.text_len, preset.dit["text_dim"], generator=g).to(device))

        def make(kernels):
            dit = DiTExport(copy.deepcopy(base))
            # after DiTExport, which installs the export processor: in half precision its
            # non-SDPA path materialises L x L scores (71 GB at 720P)
            use_sdpa_attention(dit.transformer)
            return CudaTorchRunner(dit, ["latents", "timestep", "prompt_embeds"],
                                   ["noise_pred"], device=str(device), dtype=dtype_name,
                                   kernels=kernels)
        row = _on_off(make, lambda r: r.forward(*args)[0], device, repeats, warmup, log,
                      f"DiT {layers} layers {w}x{h}x{f}")
        rows["dit"].append(dict(row, width=w, height=h, frames=f,
                                tokens=dit_tokens(w, h, f, preset_name)))
    del base
    if vae_frames is None:
        return rows
    vae = _build("vae", preset, device, dtype)
    mean, std = vae.config.latents_mean, vae.config.latents_std
    for w, h, _ in shapes:
        z = torch.randn(1, *_latent_dims(preset, w, h, vae_frames), generator=g).to(device)

        def make(kernels):
            return pipeline.vae_runners(copy.deepcopy(vae), CudaTorchRunner, device=str(device),
                                        dtype=dtype_name, kernels=kernels)
        row = _on_off(make, lambda r: pipeline.decode_frames(*r, z, mean, std), device,
                      min(repeats, 3), warmup, log, f"VAE decode {w}x{h}x{vae_frames}")
        rows["vae_decode"].append(dict(row, width=w, height=h, frames=vae_frames))
    return rows


def _use_interpreter() -> None:
    """TRITON_INTERPRET=1 counts only when set before a kernel module is imported."""
    loaded = [m for m in sys.modules if m.startswith("t2vserve.kernels.")
              and m.rsplit(".", 1)[1] not in ("reference", "shapes", "_common")]
    if os.environ.get("TRITON_INTERPRET") != "1" and loaded:
        raise ValueError(f"--interpret: {', '.join(sorted(loaded))} already imported without "
                         f"TRITON_INTERPRET=1; set it in the environment instead")
    os.environ["TRITON_INTERPRET"] = "1"


def run_bench(device: str = "cuda", resolutions=("480p", "720p"), repeats: int = 20,
              warmup: int = 2, compile: bool = True, e2e: bool = True, interpret: bool = False,
              log=print) -> dict:
    """Every kernel at each resolution's shapes, then (e2e) the DiT and VAE on and off.
    interpret: CPU, tiny shapes, Triton's interpreter (a smoke test of this script)."""
    dev = torch.device(device)
    if interpret:
        if dev.type != "cpu":
            raise ValueError(f"--interpret runs on --device cpu, got {device!r}")
        _use_interpreter()
        resolutions, repeats, warmup, compile = ("tiny",), 1, 0, False
    elif dev.type != "cuda" or not torch.cuda.is_available():
        seen = "one, but --device is " + device if torch.cuda.is_available() else "none"
        raise ValueError(f"bench kernels needs a CUDA device (torch {torch.__version__} sees "
                         f"{seen}); --device cpu --interpret runs a tiny smoke test under "
                         f"Triton's interpreter")
    unknown = [r for r in resolutions if r not in RESOLUTIONS and not interpret]
    if unknown or not resolutions:
        raise ValueError(f"--shapes takes {', '.join(RESOLUTIONS)} (comma-separated), got "
                         f"{','.join(resolutions)!r}")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    dtype_name = "fp32" if interpret else "bf16"
    dtype = torch.float32 if interpret else torch.bfloat16
    name = "cpu" if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    result = {"kind": "t2vserve.bench.kernels", "version": 1, "device": name,
              "interpret": interpret,
              "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "torch": torch.__version__, "dtype": str(dtype).removeprefix("torch."),
              "repeats": repeats, "compile": compile, "machine": _machine(), "target": TARGET}
    try:
        import triton
        result["triton"] = triton.__version__
    except ImportError as exc:
        raise ValueError(f"bench kernels needs triton: {exc}") from None
    copy_bw = copy_bandwidth(dev, max(repeats, 3), nbytes=2**30 if dev.type == "cuda" else 2**24)
    sheet = datasheet_peak(name) if dev.type == "cuda" else None
    sheet = DATASHEET_GBS.get(sheet[0]) if sheet else None
    result["bandwidth"] = {"copy_gbs": copy_bw["gbs"], "copy": copy_bw,
                           "datasheet_gbs": sheet[0] if sheet else None,
                           "datasheet_note": sheet[1] if sheet else None}
    peaks = {"copy": copy_bw["gbs"]} | ({"datasheet": sheet[0]} if sheet else {})
    log(f"  copy {copy_bw['gbs']:,.0f} GB/s" + (f", datasheet {sheet[0]:,} GB/s" if sheet else ""))
    from t2vserve.kernels import HEADS

    result["kernels"] = []
    for res in resolutions:
        for kname, case, shapes in kernel_cases(res):
            result["kernels"].append(dict(_bench_case(
                kname, case, shapes, dev, dtype, TINY_HEADS if interpret else HEADS, repeats,
                warmup, compile, peaks, log), resolution=res))
    if e2e:
        # the interpreter takes ~6 s per tiny VAE decode (150 norm launches): DiT only there
        preset, shapes, layers, frames = ("tiny", [(64, 64, 5)], 1, None) if interpret else \
            (PRESET, [RESOLUTIONS[r] for r in resolutions], DIT_LAYERS, VAE_FRAMES)
        result["end_to_end"] = dict(end_to_end(preset, shapes, dev, dtype_name, repeats, warmup,
                                               log, layers, frames), preset=preset)
    result["targets"] = targets(result)
    return result


def targets(result: dict) -> list[dict]:
    """Issue 25's targets: each fused kernel at >= 80 % of the copy bandwidth at 720P (its
    largest case there: the VAE's small sites are launch-bound, and listed only), and the
    VAE decode faster with the kernels."""
    out, largest = [], {}
    for r in result["kernels"]:
        best = largest.get(r["kernel"])
        if r["resolution"] == "720p" and (best is None or r["bytes"] > best["bytes"]):
            largest[r["kernel"]] = r
    for r in largest.values():
        frac = r["triton"]["of_copy"]
        out.append({"target": f"{r['kernel']} {r['case']} >= {TARGET:.0%} of copy bandwidth",
                    "value": frac, "met": frac >= TARGET})
    for v in (result.get("end_to_end") or {}).get("vae_decode", []):
        out.append({"target": f"VAE decode {v['width']}x{v['height']}x{v['frames']} faster with "
                              f"kernels", "value": v["speedup"], "met": v["speedup"] > 1.0})
    return out


def _ms(t) -> str:
    return "-" if t is None else f"{t['median_ms']:,.3f}"


def markdown(r: dict) -> str:
    bw = r["bandwidth"]
    head = f"Copy **{bw['copy_gbs']:,.0f} GB/s** measured"
    if bw["datasheet_gbs"]:
        head += f"; datasheet {bw['datasheet_gbs']:,} GB/s ({bw['datasheet_note']})"
    smoke = " (interpreter smoke test)" if r["interpret"] else ""
    lines = [f"# bench kernels on {r['device']}{smoke}",
             "", f"{r['date']}, torch {r['torch']}, triton {r['triton']}, {r['dtype']}, "
             f"median of {r['repeats']}. {head}.", "",
             "| kernel | case | x | MB | triton ms | GB/s | of copy | torch ms | compiled ms "
             "| max abs err |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k in r["kernels"]:
        t = k["triton"]
        lines.append(f"| {k['kernel']} | {k['case']} | {'x'.join(map(str, k['shapes']['x']))} "
                     f"| {k['bytes'] / 1e6:,.1f} | {_ms(t)} | {t['gbs']:,.0f} "
                     f"| {t['of_copy']:.0%} | {_ms(k['torch'])} | {_ms(k.get('torch_compile'))} "
                     f"| {k['max_abs_err']:.1e} |")
    e2e = r.get("end_to_end")
    if e2e:
        vae = (f"the VAE decodes {e2e['vae_frames']} frames" if e2e["vae_frames"]
               else "no VAE decode (interpreter)")
        lines += ["", f"End to end, {r['dtype']}: the DiT forward has {e2e['dit_layers']} layers "
                  f"(random weights, batch 2); {vae}.", "",
                  "| what | off ms | triton ms | speedup | max rel diff |",
                  "|---|---:|---:|---:|---:|"]
        for row in e2e["dit"] + e2e["vae_decode"]:
            lines.append(f"| {row['what']} | {_ms(row['off'])} | {_ms(row['triton'])} "
                         f"| {row['speedup']:.2f} | {row['max_rel_diff']:.1e} |")
    if r["targets"]:
        lines += ["", "Targets:"] + [f"- {'met' if t['met'] else 'MISSED'}: {t['target']} "
                                     f"({t['value']:.2f})" for t in r["targets"]]
    return "\n".join(lines) + "\n"


def write_bench(result: dict, out_dir: str | Path = "perf/results") -> Path:
    """kernels-<device-slug>[-interpret]-<date>.json and .md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slug = device_slug(result["device"]) + ("-interpret" if result["interpret"] else "")
    path = out / f"kernels-{slug}-{result['date'][:10]}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(result))
    return path
