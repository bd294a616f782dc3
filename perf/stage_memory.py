"""Memory per stage process of a running tritonserver: which Python-backend stub serves which
model (from /proc), its host RSS, and its GPU memory as nvidia-smi reports it."""

import subprocess
from pathlib import Path
from typing import Any

from t2vserve.perf.gpu_check_report import STAGE_MODELS


def stage_processes(server_pid: int) -> dict[int, str]:
    """pid -> Triton model name of each Python-backend stub the server started (read from
    the stub's command line, which names the model's model.py)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != server_pid:
                continue
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        for a in args:
            parts = Path(a.decode("utf-8", "replace")).parts
            if len(parts) >= 3 and parts[-1] == "model.py" and parts[-3] in STAGE_MODELS:
                out[int(entry.name)] = parts[-3]
                break
    return out


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def compute_apps(text: str) -> tuple[list[tuple[int, float]], list[str]]:
    """nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits ->
    ([(pid, MiB)], lines it could not read, e.g. "[N/A]" where the driver does not say)."""
    rows, unreadable = [], []
    for line in filter(str.strip, text.splitlines()):
        try:
            pid_text, mib_text = line.split(",")
            rows.append((int(pid_text), float(mib_text)))
        except ValueError:
            unreadable.append(line.strip())
    return rows, unreadable


def memory_by_stage(server_pid: int, device: str) -> dict:
    """GPU memory (nvidia-smi, per compute process) and host RSS of each stage process."""
    stubs = stage_processes(server_pid)
    per_model: dict[str, dict] = {}
    for pid, model in sorted(stubs.items()):
        m = per_model.setdefault(model, {"pids": [], "host_rss_mib": 0.0, "gpu_mib": None})
        m["pids"].append(pid)
        m["host_rss_mib"] = round(m["host_rss_mib"] + (_rss_mib(pid) or 0.0), 1)
    result: dict[str, Any] = {"stage_processes": per_model, "gpu": None}
    if device == "cpu":
        result["gpu"] = "no GPU: the check ran with --device cpu"
        return result
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        result["gpu"] = f"nvidia-smi failed: {exc}"
        return result
    rows, unreadable = compute_apps(out)
    unmapped: list[dict] = []
    for pid, mib in rows:
        owner = stubs.get(pid)
        if owner is None:
            unmapped.append({"pid": pid, "used_mib": mib})
            continue
        m = per_model[owner]
        m["gpu_mib"] = (m["gpu_mib"] or 0.0) + mib
    result["gpu"] = {"nvidia_smi_rows": len(rows), "unmapped": unmapped, "unreadable": unreadable,
                     "note": "used_memory per compute process; pids that do not match a stub "
                             "(a container's own pid namespace) are listed as unmapped"}
    return result
