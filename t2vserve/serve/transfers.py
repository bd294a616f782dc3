"""Host<->device bytes each stage process moves, measured in the process (gpu-check).

Off unless the server's environment sets T2VSERVE_TRANSFER_LOG to a folder (the Python
stubs inherit tritonserver's environment). Even then an execute is profiled only while the
file `<folder>/on` exists, so a dedicated request is measured and load tests are not slowed.
Each profiled execute runs under torch.profiler (CUDA activity where this process has
initialised CUDA) and appends one JSON line to `<folder>/<model>-<pid>.jsonl`: the bytes of
every memcpy the CUDA trace saw, by direction. Measured, not computed: a process that never
touched CUDA moved nothing to a device, and records 0 with the reason.
"""

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

ENV = "T2VSERVE_TRANSFER_LOG"
MARKER = "on"
DIRECTIONS = ("HtoD", "DtoH", "DtoD")


def log_folder() -> Path | None:
    folder = os.environ.get(ENV)
    return Path(folder) if folder else None


def memcpy_bytes(trace: dict) -> dict:
    """Bytes per direction summed over a Chrome trace's `gpu_memcpy` events (what
    torch.profiler's export_chrome_trace writes: name "Memcpy HtoD (Pageable -> Device)",
    args.bytes). Directions other than HtoD/DtoH/DtoD (e.g. PtoP) are counted under their own
    name; events of other categories are ignored. `gpu_events` counts every device-side
    event (kernels, copies, memsets): none at all under CUDA activity means the profiler saw
    nothing of the device (no CUPTI), not that nothing moved."""
    out = dict.fromkeys(DIRECTIONS, 0) | {"memcpy_events": 0, "gpu_events": 0}
    for event in trace.get("traceEvents", []):
        if event.get("ph") != "X":
            continue
        if event.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            out["gpu_events"] += 1
        if event.get("cat") != "gpu_memcpy":
            continue
        words = str(event.get("name", "")).split()
        direction = words[1] if len(words) > 1 and words[0] == "Memcpy" else "other"
        n = int((event.get("args") or {}).get("bytes", 0))
        out[direction] = out.get(direction, 0) + n
        out["memcpy_events"] += 1
    return out


def _cuda_in_use() -> bool:
    import sys

    torch = sys.modules.get("torch")  # never import torch (or start CUDA) just to look
    return bool(torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized())


@contextlib.contextmanager
def _profiled(folder: Path, model: str, requests: int):
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = _cuda_in_use()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        yield
        if cuda:
            torch.cuda.synchronize()  # the last copies land in the trace
    wall_ms = (time.perf_counter() - t0) * 1e3
    with tempfile.TemporaryDirectory(prefix="t2vserve-trace-") as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        counted = memcpy_bytes(json.loads(path.read_text()))
    if cuda and counted["gpu_events"] == 0:
        counted["warning"] = "CUDA activity was requested but the trace holds no device events"
    elif not cuda and _cuda_in_use():
        counted["warning"] = ("this execute initialised CUDA, so its device copies were not "
                              "profiled: measure a request after a warm-up one")
    line = {"model": model, "pid": os.getpid(), "requests": requests,
            "device": f"cuda:{torch.cuda.current_device()}" if cuda else "cpu",
            "profiled": "CPU and CUDA activity" if cuda else
                        "CPU activity only: this process has not initialised CUDA",
            "wall_ms": round(wall_ms, 2), "time": time.time(), **counted}
    if cuda:  # what this process's caching allocator holds (the CUDA context is extra)
        line["cuda_memory_mib"] = {
            "allocated": round(torch.cuda.memory_allocated() / 2**20, 1),
            "reserved": round(torch.cuda.memory_reserved() / 2**20, 1),
            "max_allocated": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
    with open(folder / f"{model}-{os.getpid()}.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


def record(model: str, requests: int):
    """Context manager around one `execute` of `model` over `requests` requests."""
    folder = log_folder()
    if folder is None or not (folder / MARKER).exists():
        return contextlib.nullcontext()
    return _profiled(folder, model, requests)


def read_records(folder: str | Path) -> list[dict]:
    """Every record the stage processes wrote under `folder`, oldest first."""
    rows = []
    for path in sorted(Path(folder).glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(rows, key=lambda r: r["time"])


def per_model(records: list[dict]) -> dict:
    """model -> executes, requests and bytes per direction summed over `records`."""
    out: dict[str, dict] = {}
    for r in records:
        m = out.setdefault(r["model"], {"executes": 0, "requests": 0, "device": r["device"],
                                        "pids": [], **dict.fromkeys(DIRECTIONS, 0)})
        m["executes"] += 1
        m["gpu_events"] = m.get("gpu_events", 0) + r.get("gpu_events", 0)
        if r.get("warning") and r["warning"] not in m.setdefault("warnings", []):
            m["warnings"].append(r["warning"])
        m["requests"] += r["requests"]
        if r["pid"] not in m["pids"]:
            m["pids"].append(r["pid"])
        for d in DIRECTIONS:
            m[d] += r.get(d, 0)
        if "cuda_memory_mib" in r:
            m["cuda_max_allocated_mib"] = max(m.get("cuda_max_allocated_mib", 0.0),
                                              r["cuda_memory_mib"]["max_allocated"])
    return out
