"""perf_analyzer (the binary inside the tritonclient 2.50 wheel) against the `t2v` model.

Input data comes from the deployment profile: its defaults, with Chinese and English product
prompts and distinct seeds, so the load is what the profile admits. One call measures one load
level (a concurrency or a request rate) and returns what perf_analyzer saw: throughput,
latency percentiles, every measured request's latency (from its profile export) and the
queue/compute split of each composing model (`--bls-composing-models`).
"""

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from t2vserve.profile import Profile
from t2vserve.text_corpus import BRIEF_PROMPTS

PROMPTS = BRIEF_PROMPTS + [
    "a red cup rotating slowly on a wooden table",
    "蓝色保温杯在白色摄影棚里缓慢旋转",
    "a green bottle on a grey background, zooming in",
    "黄色球在木桌上静止",
]
# The models `t2v` calls through BLS, in pipeline order.
COMPOSING_MODELS = ("text_encoder", "dit", "vae_decoder", "video_encoder")
# `t2vserve serve` renders every model as version 1.
MODEL_VERSION = "1"


def workload(profile: Profile, n: int = 8) -> list[dict]:
    """n requests at the profile's default size, steps and guidance, cycling prompts, one seed
    each. perf_analyzer sends them round-robin; the in-process baseline runs the same list."""
    d = profile.defaults
    return [dict(prompt=PROMPTS[i % len(PROMPTS)], width=d["width"], height=d["height"],
                 num_frames=d["num_frames"], fps=d["fps"], steps=d["steps"],
                 guidance_scale=float(d["guidance_scale"]), seed=1000 + i) for i in range(n)]


def input_data(profile: Profile, n: int = 8) -> dict:
    """perf_analyzer --input-data JSON for `workload(profile, n)`."""
    return {"data": [{k: {"content": [v], "shape": [1]} for k, v in row.items()}
                     for row in workload(profile, n)]}


def write_input_data(profile: Profile, path: Path, n: int = 8) -> Path:
    path.write_text(json.dumps(input_data(profile, n), ensure_ascii=False))
    return path


def binary() -> Path:
    path = Path(sys.executable).parent / "perf_analyzer"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `make setup` (tritonclient 2.50.0)")
    return path


def environment() -> dict:
    import nvidia.cuda_runtime

    # perf_analyzer links libcudart.so.12 even for CPU-only servers
    libdir = Path(nvidia.cuda_runtime.__path__[0]) / "lib"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libdir), env.get("LD_LIBRARY_PATH")) if p)
    return env


@dataclass
class LevelResult:
    concurrency: int | None
    request_rate: float | None
    throughput: float                  # videos/s, perf_analyzer's "Inferences/Second"
    latency_ms: dict                   # avg, p50, p90, p95, p99
    latencies_ms: list[float]          # every request of the measurement windows
    client_ms: dict                    # perf_analyzer's own split of the average request
    models: dict = field(default_factory=dict)  # composing model -> queue/compute split


def _us_to_ms(row: dict, key: str) -> float:
    return round(float(row[key]) / 1000.0, 3)


def _request_latencies(export: Path) -> list[float]:
    # The export also holds every response's outputs (MP4 bytes, not UTF-8); only the
    # timestamps are read.
    doc = json.loads(export.read_bytes().decode("utf-8", "replace"))
    out = []
    for experiment in doc["experiments"]:
        for r in experiment["requests"]:
            if r["response_timestamps"]:
                out.append(round((r["response_timestamps"][-1] - r["timestamp"]) / 1e6, 3))
    return out


def level_tag(concurrency: int | None, request_rate: float | None) -> str:
    """The level's name in its file names: c4, r0.5."""
    if (concurrency is None) == (request_rate is None):
        raise ValueError("give exactly one of concurrency or request_rate")
    return f"c{concurrency}" if concurrency is not None else f"r{request_rate:g}"


def level_files(tag: str) -> tuple[str, str]:
    """The level's CSV and profile-export file names, relative to its work folder."""
    return f"{tag}.csv", f"{tag}.export.json"


def command(url: str, data_path: Path, *, concurrency: int | None = None,
            request_rate: float | None = None, requests_per_window: int = 4,
            model: str = "t2v", composing: tuple = COMPOSING_MODELS,
            max_trials: int = 3) -> list[str]:
    """The perf_analyzer command line for one level, run in the folder its files go to."""
    csv_name, export_name = level_files(level_tag(concurrency, request_rate))
    args = [
        str(binary()), "-m", model, "-x", MODEL_VERSION, "-u", url, "-i", "grpc",
        "--input-data", str(data_path), "--measurement-mode", "count_windows",
        "--measurement-request-count", str(requests_per_window),
        # count windows on a noisy shared box rarely look "stable"; keep what is measured
        "--max-trials", str(max_trials), "--stability-percentage", "999",
        # relative names, run inside work_dir: perf_analyzer names each composing model's CSV
        # by prefixing "<model>_v1." to the -f string, which breaks on a path with folders
        "-f", csv_name, "--verbose-csv", "--profile-export-file", export_name,
    ]
    if composing:
        # Versions named: left unnamed, perf_analyzer takes a composing model's version from
        # the stats whose queue count grew during the window, and stops with "failed to find
        # the requested model version" when a window saw no call to it. That happens at
        # concurrency 4, where requests finish in step and a window can hold the last two
        # completions of a batch whose VAE and MP4 calls fell in the window before.
        args += ["--bls-composing-models", ",".join(f"{m}:{MODEL_VERSION}" for m in composing)]
    if concurrency is not None:
        args += ["--concurrency-range", str(concurrency)]
    else:
        args += ["--request-rate-range", f"{request_rate:g}", "--request-distribution", "poisson"]
    return args


def measure(url: str, data_path: Path, work_dir: Path, *, concurrency: int | None = None,
            request_rate: float | None = None, requests_per_window: int = 4,
            model: str = "t2v", composing: tuple = COMPOSING_MODELS, max_trials: int = 3,
            timeout_s: float = 1800) -> LevelResult:
    """One load level. Count windows, because one request takes seconds; a request rate
    uses Poisson arrivals (what a platform's traffic looks like)."""
    tag = level_tag(concurrency, request_rate)
    args = command(url, Path(data_path).resolve(), concurrency=concurrency,
                   request_rate=request_rate, requests_per_window=requests_per_window,
                   model=model, composing=composing, max_trials=max_trials)
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    csv_path, export = (work_dir / name for name in level_files(tag))
    proc = subprocess.run(args, env=environment(), capture_output=True, text=True,
                          timeout=timeout_s, cwd=work_dir)
    (work_dir / f"{tag}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({proc.returncode}) at {tag}:\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    with open(csv_path) as f:
        row = next(csv.DictReader(f))
    result = LevelResult(
        concurrency=concurrency, request_rate=request_rate,
        throughput=float(row["Inferences/Second"]),
        latency_ms={k: _us_to_ms(row, f"{k} latency") for k in ("p50", "p90", "p95", "p99")}
        | {"avg": _us_to_ms(row, "Avg latency")},
        latencies_ms=_request_latencies(export),
        client_ms={"send": _us_to_ms(row, "Client Send"),
                   "network_and_server": _us_to_ms(row, "Network+Server Send/Recv"),
                   "server_queue": _us_to_ms(row, "Server Queue"),
                   "server_compute": round(sum(_us_to_ms(row, f"Server Compute {k}")
                                               for k in ("Input", "Infer", "Output")), 3),
                   "recv": _us_to_ms(row, "Client Recv")},
    )
    export.unlink()  # it carries every output video; the latencies are kept above
    for name in composing:
        # perf_analyzer writes one CSV per composing model next to the main one
        path = work_dir / f"{name}_v{MODEL_VERSION}.{csv_path.name}"
        if not path.exists():
            continue
        with open(path) as f:
            m = next(csv.DictReader(f))
        result.models[name] = {
            "requests_per_s": float(m["Inferences/Second"]),
            "queue_ms": _us_to_ms(m, "Server Queue"),
            "compute_ms": round(sum(_us_to_ms(m, f"Server Compute {k}")
                                    for k in ("Input", "Infer", "Output")), 3),
        }
    return result
