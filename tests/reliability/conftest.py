"""Each reliability case runs `t2vserve serve` (tritonserver under its supervisor) as a
subprocess with its own profile and free loopback ports, and records its figures for
RELIABILITY.md (build/reliability/<case>.json; `make soak` renders them)."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.integration.conftest import PROJECT, free_ports

RESULTS = Path(os.environ.get("T2VSERVE_RELIABILITY_OUT", PROJECT / "build" / "reliability"))


def deep_update(data: dict, overrides: dict) -> dict:
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            deep_update(data[k], v)
        else:
            data[k] = v
    return data


@dataclass
class Served:
    proc: subprocess.Popen
    tmp: Path
    profile_path: Path
    ports: dict
    log: Path
    stdout: Path
    repo: Path
    events: list = field(default_factory=list)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    def http(self, path: str, port: str = "http", timeout: float = 5) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[port]}{path}",
                                        timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError as e:
            return -1, repr(e).encode()

    def ready(self) -> bool:
        return self.http("/v2/health/ready")[0] == 200

    def model_ready(self, model: str) -> bool:
        return self.http(f"/v2/models/{model}/ready")[0] == 200

    def supervisor_metrics(self) -> str:
        return self.http("/metrics", "supervisor")[1].decode()

    def triton_metric(self, name: str, **labels) -> float:
        """Sum of a Triton Prometheus metric over the samples matching the labels."""
        text = self.http("/metrics", "metrics")[1].decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            label_text, value = line[len(name) + 1:].rsplit("} ", 1)
            got = dict(kv.split("=", 1) for kv in label_text.split(","))
            if all(got.get(k) == f'"{v}"' for k, v in labels.items()):
                total += float(value)
        return total

    def stats(self, model: str) -> dict:
        import tritonclient.grpc as grpcclient

        c = grpcclient.InferenceServerClient(self.grpc_url)
        try:
            s = c.get_inference_statistics(model, as_json=True)["model_stats"][0]
        finally:
            c.close()
        inf = s.get("inference_stats", {})
        return {"success": int(inf.get("success", {}).get("count", 0)),
                "fail": int(inf.get("fail", {}).get("count", 0)),
                "executions": int(s.get("execution_count", 0)),
                "inferences": int(s.get("inference_count", 0))}

    def server_pid(self) -> int:
        from t2vserve.serve.server import triton_home

        binary = str(triton_home() / "bin" / "tritonserver")
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if argv[0].decode(errors="replace") == binary and \
                        f"--grpc-port={self.ports['grpc']}".encode() in argv:
                    return int(entry)
        raise RuntimeError("tritonserver process not found")

    def stub_pids(self, model: str) -> list[int]:
        from t2vserve.serve.supervisor import stub_pids

        return stub_pids(self.server_pid(), self.repo, model)

    def shm_segments(self) -> list[str]:
        prefix = f"t2vserve_{self.ports['grpc']}_"
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))

    def log_tail(self, n: int = 4000) -> str:
        out = b""
        for p in (self.stdout, self.log):
            if p.exists():
                out += p.read_bytes()[-n:]
        return out.decode("utf-8", "replace")

    def stop(self, timeout_s: float = 120) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def start_served(tmp: Path, artifacts: Path, overrides: dict | None = None,
                 timeout_s: float = 300) -> Served:
    data = yaml.safe_load((PROJECT / "profiles" / "cpu-tiny.yaml").read_text())
    data["model"]["artifacts"] = str(artifacts)
    http, grpc, metrics, supervisor = free_ports(4)
    data["server"].update(http_port=http, grpc_port=grpc, metrics_port=metrics,
                          supervisor_port=supervisor)
    deep_update(data, overrides or {})
    tmp.mkdir(parents=True, exist_ok=True)
    profile_path = tmp / "profile.yaml"
    profile_path.write_text(yaml.safe_dump(data, allow_unicode=True))
    log, stdout = tmp / "tritonserver.log", tmp / "serve.out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "t2vserve.cli", "serve", "--profile", str(profile_path),
         "--repo", str(tmp / "model_repository"), "--log", str(log)],
        stdout=open(stdout, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    served = Served(proc, tmp, profile_path, dict(http=http, grpc=grpc, metrics=metrics,
                                                  supervisor=supervisor),
                    log, stdout, tmp / "model_repository")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"t2vserve serve exited with {proc.returncode}:\n{served.log_tail()}")
        if served.http("/healthz", "supervisor")[0] == 200:
            return served
        time.sleep(0.5)
    served.stop()
    raise RuntimeError(f"t2vserve serve not healthy after {timeout_s} s:\n{served.log_tail()}")


@pytest.fixture
def serve_factory(tiny_artifacts, tmp_path):
    started = []

    def make(overrides: dict | None = None, name: str = "server") -> Served:
        s = start_served(tmp_path / name, tiny_artifacts, overrides)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def module_serve(tiny_artifacts, tmp_path_factory):
    """Like serve_factory, for a server shared by the tests of one module."""
    started = []

    def make(overrides: dict | None = None, name: str = "server") -> Served:
        s = start_served(tmp_path_factory.mktemp(name), tiny_artifacts, overrides)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


def infer(url: str, inputs=None, *, priority: int = 0, timeout_us: int | None = None,
          **values) -> tuple[str, str, float, object]:
    """One raw gRPC call, no retries: (status, message, seconds, result or None)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    c = grpcclient.InferenceServerClient(url)
    t0 = time.monotonic()
    try:
        kw = {"timeout": timeout_us} if timeout_us else {}
        r = c.infer("t2v", inputs if inputs is not None else t2v_inputs(**values),
                    priority=priority, client_timeout=900, **kw)
        return "ok", "", time.monotonic() - t0, r
    except InferenceServerException as e:
        return str(e.status()).replace("StatusCode.", ""), e.message() or str(e), \
            time.monotonic() - t0, None
    finally:
        c.close()


def rss_kb(pids) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


@pytest.fixture
def record():
    """record(case, **figures): one JSON per case for RELIABILITY.md."""
    def write(case: str, **figures):
        RESULTS.mkdir(parents=True, exist_ok=True)
        figures = {"case": case, "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   **figures}
        (RESULTS / f"{case}.json").write_text(json.dumps(figures, indent=1, ensure_ascii=False))
    return write


def t2v_inputs(prompt: bytes | str = "a red cup rotating slowly on a wooden table", **values):
    """Raw gRPC inputs for t2v (no client-side validation): name -> numpy value."""
    import tritonclient.grpc as grpcclient

    dtypes = {"width": np.int32, "height": np.int32, "num_frames": np.int32, "fps": np.int32,
              "steps": np.int32, "guidance_scale": np.float32, "seed": np.int64}
    data = prompt.encode() if isinstance(prompt, str) else prompt
    out = [grpcclient.InferInput("prompt", [1], "BYTES")]
    out[0].set_data_from_numpy(np.array([data], dtype=np.object_))
    for name, v in values.items():
        arr = np.array([v], dtype=dtypes[name])
        t = grpcclient.InferInput(name, [1], {np.int32: "INT32", np.int64: "INT64",
                                              np.float32: "FP32"}[dtypes[name]])
        t.set_data_from_numpy(arr)
        out.append(t)
    return out
