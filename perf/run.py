"""`t2vserve perf run`: a load sweep of the served stack, written as one JSON result.

For each load level perf_analyzer measures `t2v` end to end and each composing model's
queue/compute split; Triton's own statistics, read before and after the level, give how many
`dit` requests each execution merged (step-level batching at work).
"""

import datetime as dt
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from t2vserve.perf import analyzer
from t2vserve.profile import Profile

RESULTS_DIR = Path("perf/results")


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
        mem_gib = round(kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    gpu = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        gpu = out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(),
            "memory_gib": mem_gib, "gpu": gpu, "python": platform.python_version(),
            "os": platform.platform()}


def device_label(m: dict) -> str:
    return m["gpu"] or f"CPU only: {m['cores']} cores, {m['cpu']}"


def model_statistics(url: str) -> dict:
    """Cumulative Triton statistics per model: request/execution/inference counts, times in ns."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(as_json=True)
    finally:
        client.close()
    out = {}
    for m in stats.get("model_stats", []):
        s = m.get("inference_stats", {})
        out[m["name"]] = {
            "success": int(s.get("success", {}).get("count", 0)),
            "fail": int(s.get("fail", {}).get("count", 0)),
            "inference_count": int(m.get("inference_count", 0)),
            "execution_count": int(m.get("execution_count", 0)),
        }
    return out


def batching(before: dict, after: dict, names=analyzer.COMPOSING_MODELS) -> dict:
    """Requests and batch samples merged per execution over a level, from counter deltas."""
    out = {}
    for name in names:
        if name not in before or name not in after:
            continue
        d = {k: after[name][k] - before[name][k] for k in after[name]}
        execs = d["execution_count"]
        out[name] = {
            "requests": d["success"] + d["fail"], "executions": execs,
            "mean_requests_per_execution": round((d["success"] + d["fail"]) / execs, 3) if execs else None,
            "mean_batch_samples": round(d["inference_count"] / execs, 3) if execs else None,
        }
    return out


def wait_for_model(url: str, model: str = "t2v", timeout_s: float = 30) -> str:
    """The server's version once `model` is ready; a clear error if nothing answers."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        client = grpcclient.InferenceServerClient(url)
        try:
            if client.is_model_ready(model):
                return client.get_server_metadata(as_json=True).get("version", "?")
        except InferenceServerException as exc:
            last = exc
        finally:
            client.close()
        time.sleep(1)
    raise ConnectionError(f"no ready model {model!r} at {url} after {timeout_s:.0f} s "
                          f"(start one with `make serve`): {last}")


def sweep(profile: Profile, url: str, concurrency: list[int] | None = None,
          request_rates: list[float] | None = None, *, requests_per_window: int = 4,
          n_inputs: int = 8, work_dir: Path | None = None, log=print) -> dict:
    """Measure every level in order; returns the result document (see perf/README.md)."""
    if not concurrency and not request_rates:
        raise ValueError("give --concurrency and/or --request-rate")
    if any(c < 1 for c in concurrency or []) or any(r <= 0 for r in request_rates or []):
        raise ValueError("concurrency must be >= 1 and request rates > 0")
    version = wait_for_model(url)
    levels = [("concurrency", c) for c in concurrency or []] + \
             [("request_rate", r) for r in request_rates or []]
    with tempfile.TemporaryDirectory(prefix="t2vserve-perf-") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = analyzer.write_input_data(profile, work / "input.json", n_inputs)
        rows = []
        for kind, value in levels:
            log(f"perf_analyzer: {kind} {value} ...")
            before = model_statistics(url)
            t0 = time.perf_counter()
            level = analyzer.measure(url, data, work, requests_per_window=requests_per_window,
                                     **{kind: value})
            row = asdict(level)
            row["wall_s"] = round(time.perf_counter() - t0, 1)
            row["batching"] = batching(before, model_statistics(url))
            rows.append(row)
            dit = row["batching"].get("dit", {})
            log(f"  {level.throughput:.3f} videos/s, p50 {level.latency_ms['p50']:.0f} ms, "
                f"p95 {level.latency_ms['p95']:.0f} ms; dit requests per execution "
                f"{dit.get('mean_requests_per_execution')}")
    m = machine()
    return {
        "kind": "t2vserve.perf.run", "version": 1,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": m["host"], "device": device_label(m), "machine": m,
        "profile": profile.name, "profile_path": str(profile.path),
        "server": {"url": url, "triton_version": version},
        "model": "t2v", "composing_models": list(analyzer.COMPOSING_MODELS),
        "workload": {**{k: v for k, v in analyzer.workload(profile, 1)[0].items()
                        if k not in ("prompt", "seed")},
                     "inputs": n_inputs, "languages": "zh, en",
                     "requests_per_window": requests_per_window},
        "levels": rows,
        "command": " ".join(["t2vserve"] + sys.argv[1:]) if sys.argv else None,
    }


def result_path(result: dict, out_dir: Path = RESULTS_DIR) -> Path:
    date = result["created"][:10]
    host = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in result["host"])
    return Path(out_dir) / f"{date}-{host}-{result['profile']}.json"
