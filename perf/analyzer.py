"""perf_analyzer (the binary inside the tritonclient 2.50 wheel) against the `t2v` model.

Input data comes from the deployment profile: its defaults and a few allowed sizes, with
Chinese and English product prompts, so the load is what the profile admits.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from t2vserve.profile import Profile
from t2vserve.text_corpus import BRIEF_PROMPTS

PROMPTS = BRIEF_PROMPTS + [
    "a red cup rotating slowly on a wooden table",
    "蓝色保温杯在白色摄影棚里缓慢旋转",
    "a green bottle on a grey background, zooming in",
    "黄色球在木桌上静止",
]


def input_data(profile: Profile, n: int = 8) -> dict:
    """perf_analyzer --input-data JSON: n requests cycling prompts and seeds at the profile's
    default size, steps and guidance."""
    d = profile.defaults
    rows = []
    for i in range(n):
        rows.append({
            "prompt": {"content": [PROMPTS[i % len(PROMPTS)]], "shape": [1]},
            "width": {"content": [d["width"]], "shape": [1]},
            "height": {"content": [d["height"]], "shape": [1]},
            "num_frames": {"content": [d["num_frames"]], "shape": [1]},
            "fps": {"content": [d["fps"]], "shape": [1]},
            "steps": {"content": [d["steps"]], "shape": [1]},
            "guidance_scale": {"content": [float(d["guidance_scale"])], "shape": [1]},
            "seed": {"content": [1000 + i], "shape": [1]},
        })
    return {"data": rows}


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


def run(url: str, data_path: Path, csv_path: Path, concurrency: list[int], *,
        requests_per_window: int = 4, model: str = "t2v", extra: tuple = (),
        timeout_s: float = 900) -> list[dict]:
    """Run perf_analyzer over gRPC with count windows (requests here take seconds); return
    one row per concurrency level from its CSV (throughput in infer/s, latencies in us)."""
    args = [
        str(binary()), "-m", model, "-u", url, "-i", "grpc", "--input-data", str(data_path),
        "--measurement-mode", "count_windows",
        "--measurement-request-count", str(requests_per_window),
        # count windows on a noisy 2-core box never look "stable"; accept what is measured
        "--max-trials", "3", "--stability-percentage", "999",
        "-f", str(csv_path), *extra,
    ]
    rows = []
    for c in concurrency:
        out = csv_path.with_suffix(f".c{c}.csv")
        cmd = [a if a != str(csv_path) else str(out) for a in args] + ["--concurrency-range", str(c)]
        proc = subprocess.run(cmd, env=environment(), capture_output=True, text=True,
                              timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"perf_analyzer failed ({proc.returncode}):\n{proc.stdout[-3000:]}"
                               f"\n{proc.stderr[-3000:]}")
        with open(out) as f:
            rows.extend(csv.DictReader(f))
    return rows


def write_input_data(profile: Profile, path: Path, n: int = 8) -> Path:
    path.write_text(json.dumps(input_data(profile, n), ensure_ascii=False))
    return path
