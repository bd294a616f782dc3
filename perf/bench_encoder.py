"""`t2vserve bench encoder`: what holding x264 to AVX2 on AVX-512 CPUs costs, and whether
each setting gives the same bytes every time (t2vserve/media.py says why it is held).

Per clip size, the same frames are encoded `repeats` times with each setting, the settings
interleaved so that drift of a shared machine falls on both; time is the median. The ratio
is capped over x264's own detection, measured in one run. Frames are the tiny preset's
synthetic product clips, scaled up: a clip that H.264 compresses like a product video, not
noise (its worst case). One more row encodes a small noise-like clip (what random weights
serve) `noisy_repeats` times: where x264's AVX-512 code is not deterministic, it shows there.
"""

import json
import statistics
import time
from datetime import date
from pathlib import Path

import numpy as np

from t2vserve.media import X264_ASM_WITHOUT_AVX512, host_x264_asm, encode_mp4
from t2vserve.perf.run import device_label, machine

SIZES = ((128, 128, 17), (832, 480, 49), (1280, 704, 121))


def _clip(width: int, height: int, frames: int) -> np.ndarray:
    from t2vserve.train.synthetic import render_clip

    # render at 1/4 size and repeat pixels: rendering 720p directly takes longer than encoding
    small = render_clip("cup", "red", "wooden table", "rotating", width=width // 4,
                        height=height // 4, frames=frames, seed=1)
    return np.ascontiguousarray(small.repeat(4, axis=1).repeat(4, axis=2))


def noisy_clip(seed: int = 0) -> np.ndarray:
    """64x64x5: a moving gradient under strong noise, like a random-weight model's clip."""
    y, x = np.mgrid[0:64, 0:64]
    t = np.arange(5).reshape(5, 1, 1)
    base = np.stack([128 + 100 * np.sin((x + 3 * t) / 9.0), 128 + 100 * np.cos((y - 2 * t) / 7.0),
                     np.broadcast_to(40.0 + 0 * t, (5, 64, 64))], -1)
    noise = np.random.default_rng(seed).integers(-60, 60, base.shape)
    return np.clip(base.astype(np.uint8).astype(int) + noise, 0, 255).astype(np.uint8)


def run_bench(sizes=SIZES, repeats: int = 5, noisy_repeats: int = 40, log=print) -> dict:
    settings = {"capped": X264_ASM_WITHOUT_AVX512, "x264_auto": "auto"}
    rows = []
    clips = [(f"{w}x{h}x{f}", _clip(w, h, f), repeats) for w, h, f in sizes]
    if noisy_repeats:
        clips.append(("64x64x5 noisy", noisy_clip(), noisy_repeats))
    for size, clip, n in clips:
        times = {k: [] for k in settings}
        outputs = {k: set() for k in settings}
        for _ in range(n):
            for name, asm in settings.items():
                t0 = time.perf_counter()
                data = encode_mp4(clip, 24, asm=asm)
                times[name].append(time.perf_counter() - t0)
                outputs[name].add(data)
        row = {"size": size, "repeats": n,
               **{f"{k}_ms": round(statistics.median(v) * 1e3, 1) for k, v in times.items()},
               **{f"{k}_distinct_outputs": len(v) for k, v in outputs.items()},
               "same_bytes": outputs["capped"] == outputs["x264_auto"]}
        row["capped_over_auto"] = round(row["capped_ms"] / row["x264_auto_ms"], 3)
        log(json.dumps(row))
        rows.append(row)
    return {"benchmark": "x264 held to AVX2 vs x264's own CPU detection", "date": str(date.today()),
            "machine": machine(), "host_cap": host_x264_asm(), "repeats": repeats, "rows": rows}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# x264: held to AVX2 vs its own detection ({result['date']})", "",
             f"Machine: {device_label(m)}. Cap applied by `encode_mp4` here: "
             f"{result['host_cap'] or 'none (no AVX-512)'}. Medians of interleaved encodes, one "
             "thread, crf 18, preset medium.", "",
             "| clip | runs each | capped ms | x264 auto ms | capped / auto | distinct outputs "
             "capped / auto | same bytes |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        lines.append(f"| {r['size']} | {r['repeats']} | {r['capped_ms']} | {r['x264_auto_ms']} | "
                     f"{r['capped_over_auto']} | {r['capped_distinct_outputs']} / "
                     f"{r['x264_auto_distinct_outputs']} | {r['same_bytes']} |")
    return "\n".join(lines) + "\n"


def write_bench(result: dict, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"encoder-{result['date']}-{result['machine']['host']}.json"
    path.write_text(json.dumps(result, indent=1))
    path.with_suffix(".md").write_text(markdown(result))
    return path
