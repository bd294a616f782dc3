"""`t2vserve serve`: tritonserver under a supervisor.

Triton 2.51 neither restarts a Python stub that died (kill -9, OOM killer) nor marks its model
unready: every later request to that model fails with "Stub process ... is not healthy" while
/v2/health/ready stays 200. And on SIGTERM it refuses the BLS calls of requests already
running, so a plain SIGTERM fails every in-flight generation. The supervisor covers both:

- It watches the stub processes of every model (the instance counts come from the profile)
  and each model's readiness; a missing stub or an unready model is reloaded through the
  repository API. That API is on, but only for requests carrying a token made at start,
  which only the supervisor knows (everyone else gets 403). If the server process itself
  dies, it is restarted.
- SIGTERM/SIGINT: `t2v` and `t2v_stream` are unloaded first (readiness goes false at once,
  new requests are refused, Triton lets the running ones finish, and their BLS calls still
  work because the other models stay up); once both are gone, or after
  `server.exit_timeout_s`, Triton gets its SIGTERM.
- What happened is logged and exposed on http://<address>:<supervisor_port>/metrics
  (Prometheus text) and /healthz.
"""

import json
import logging
import os
import secrets
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from t2vserve.profile import Profile
from t2vserve.serve.server import CONTROL_HEADER, ServerConfig, command, stop, wait_ready

log = logging.getLogger("t2vserve.supervisor")
# the models clients call; a drain unloads these first
PUBLIC = ("t2v", "t2v_stream")


def _stubs(server_pid: int, repository: Path) -> list[tuple[int, str, str]]:
    """(pid, model, shm region) of a server's live Python stubs, from /proc: its children
    whose command line runs <repository>/<model>/1/model.py <region> ..."""
    repo = str(Path(repository).resolve()) + "/"
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            # the state and ppid follow the ")" that closes the command name
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[1]) != server_pid or fields[0] == "Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        script = argv[1].decode(errors="replace") if len(argv) > 1 else ""
        if script.startswith(repo) and script.endswith("/1/model.py"):
            region = argv[2].decode(errors="replace") if len(argv) > 2 else ""
            out.append((int(entry), script[len(repo):-len("/1/model.py")], region))
    return out


def stub_counts(server_pid: int, repository: Path, models) -> dict[str, int]:
    counts = {m: 0 for m in models}
    for _, model, _ in _stubs(server_pid, repository):
        if model in counts:
            counts[model] += 1
    return counts


def stub_pids(server_pid: int, repository: Path, model: str) -> list[int]:
    return sorted(pid for pid, m, _ in _stubs(server_pid, repository) if m == model)


class Supervisor:
    def __init__(self, profile: Profile, cfg: ServerConfig, log_path: Path | None = None,
                 poll_s: float = 1.0):
        self.profile = profile
        self.cfg = cfg
        self.cfg.control_token = secrets.token_urlsafe(24)
        self.log_path = log_path
        self.poll_s = poll_s
        self.expected = {name: int(m["instances"]) for name, m in profile.data["models"].items()}
        self.expected["t2v_stream"] = profile.stream_instances()
        self.proc: subprocess.Popen | None = None
        self.stop_signal: str | None = None
        self.state = "starting"
        self.metrics = {"stub_crashes": {}, "reloads": {}, "reload_failures": {},
                        "last_recovery_s": {}, "server_restarts": 0, "drain_s": None,
                        "shm_reclaimed": 0}
        self.regions: dict[int, str] = {}  # live stub pid -> its /dev/shm region
        self._lock = threading.Lock()

    # Triton calls
    def _url(self, path: str) -> str:
        return f"http://{self.cfg.address}:{self.cfg.http_port}{path}"

    def _post(self, path: str, timeout: float = 300) -> bytes:
        req = urllib.request.Request(self._url(path), data=b"{}", method="POST",
                                     headers={CONTROL_HEADER: self.cfg.control_token,
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def _ready(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self._url(path), timeout=2) as r:
                return r.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def _model_states(self) -> dict[str, str]:
        return {m["name"]: m.get("state", "") for m in json.loads(self._post("/v2/repository/index", 10))}

    # lifecycle
    def _start_server(self) -> None:
        args, env = command(self.cfg)
        out = open(self.log_path, "ab") if self.log_path else None
        self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT if out else None,
                                     start_new_session=True)
        wait_ready(self.cfg, self.proc, timeout_s=600)
        self._record_regions()  # now, not at the first poll: a stub may die before it
        self.state = "serving"
        log.warning("tritonserver ready (pid %d)", self.proc.pid)

    def _record_regions(self) -> None:
        self.regions.update({pid: region for pid, _, region in
                             _stubs(self.proc.pid, self.cfg.repository)})

    def _reload(self, model: str, reason: str) -> None:
        self.state = "recovering"
        t0 = time.monotonic()
        log.warning("%s: %s; reloading it through the repository API", model, reason)
        try:
            self._post(f"/v2/repository/models/{model}/load")
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                counts = stub_counts(self.proc.pid, self.cfg.repository, [model])
                if self._ready(f"/v2/models/{model}/ready") and counts[model] >= self.expected[model]:
                    break
                time.sleep(0.2)
            else:
                raise TimeoutError(f"{model} not ready 300 s after the reload")
        except (OSError, TimeoutError, urllib.error.HTTPError) as exc:
            self._count("reload_failures", model)
            log.error("%s: reload failed (%s); restarting tritonserver", model, exc)
            self._restart_server(f"reload of {model} failed")
            return
        self._record_regions()
        took = time.monotonic() - t0
        with self._lock:
            self._count("reloads", model)
            self.metrics["last_recovery_s"][model] = round(took, 3)
        self.state = "serving"
        log.warning("%s: back and ready in %.1f s", model, took)

    def _restart_server(self, reason: str) -> None:
        self.state = "recovering"
        log.error("restarting tritonserver: %s", reason)
        if self.proc is not None:
            stop(self.proc, timeout_s=30)
        self.metrics["server_restarts"] += 1
        self._start_server()

    def _count(self, key: str, model: str) -> None:
        self.metrics[key][model] = self.metrics[key].get(model, 0) + 1

    def check_once(self) -> None:
        if self.proc.poll() is not None:
            self._restart_server(f"tritonserver exited with code {self.proc.returncode}")
            return
        stubs = _stubs(self.proc.pid, self.cfg.repository)
        dead_regions = [r for pid, r in self.regions.items() if pid not in {p for p, _, _ in stubs}]
        self.regions = {pid: region for pid, _, region in stubs}
        counts = {m: 0 for m in self.expected}
        for _, model, _ in stubs:
            counts[model] = counts.get(model, 0) + 1
        for model, want in self.expected.items():
            if counts[model] < want:
                self._count("stub_crashes", model)
                self._reload(model, f"{want - counts[model]} of {want} stub process(es) gone")
            elif not self._ready(f"/v2/models/{model}/ready"):
                self._reload(model, "not ready")
        if dead_regions:
            self._reclaim(dead_regions)

    def _reclaim(self, regions: list[str]) -> None:
        """Triton does not unlink the shared-memory region of a stub that was killed."""
        live = {r for _, _, r in _stubs(self.proc.pid, self.cfg.repository)}
        for region in regions:
            path = Path("/dev/shm") / region
            if region and region not in live and path.exists():
                path.unlink()
                self.metrics["shm_reclaimed"] += 1
                log.warning("removed %s, left behind by a dead stub", path)

    def drain(self) -> None:
        """New t2v requests refused, running ones finish (bounded), then Triton stops."""
        self.state = "draining"
        t0 = time.monotonic()
        limit = self.cfg.drain_timeout_s
        log.warning("draining: t2v takes no new requests; waiting up to %d s for the "
                    "running ones", limit)
        try:
            for model in PUBLIC:
                self._post(f"/v2/repository/models/{model}/unload", timeout=30)
            while time.monotonic() - t0 < limit and self.proc.poll() is None:
                states = self._model_states()
                if all(states.get(m) not in ("READY", "UNLOADING") for m in PUBLIC):
                    break
                time.sleep(0.2)
            else:
                log.error("drain: requests still running after %d s; stopping anyway", limit)
        except (OSError, urllib.error.HTTPError, ValueError) as exc:
            log.error("drain: %s; stopping tritonserver", exc)
        self.metrics["drain_s"] = round(time.monotonic() - t0, 3)
        log.warning("drained in %.1f s; stopping tritonserver", self.metrics["drain_s"])
        stop(self.proc, timeout_s=60)
        self.state = "stopped"

    def run(self) -> int:
        def on_signal(signum, frame):
            self.stop_signal = signal.Signals(signum).name

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        http = self._serve_metrics()
        try:
            self._start_server()
            while self.stop_signal is None:
                time.sleep(self.poll_s)
                if self.stop_signal is None:
                    self.check_once()
            log.warning("%s received", self.stop_signal)
            self.drain()
            return 0
        finally:
            if self.proc is not None and self.proc.poll() is None:
                stop(self.proc, timeout_s=30)
            http.shutdown()
            for s, handler in previous.items():
                signal.signal(s, handler)

    # /metrics and /healthz
    def prometheus(self) -> str:
        m = self.metrics
        lines = []

        def family(name, kind, help_text, samples):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(samples)

        per_model = lambda key: [f'{{model="{k}"}} {v}' for k, v in sorted(m[key].items())]
        family("t2vserve_stub_crashes_total", "counter", "Python stub processes found dead",
               [f"t2vserve_stub_crashes_total{s}" for s in per_model("stub_crashes")])
        family("t2vserve_model_reloads_total", "counter", "models reloaded by the supervisor",
               [f"t2vserve_model_reloads_total{s}" for s in per_model("reloads")])
        family("t2vserve_model_reload_failures_total", "counter", "reloads that failed",
               [f"t2vserve_model_reload_failures_total{s}" for s in per_model("reload_failures")])
        family("t2vserve_last_recovery_seconds", "gauge", "time from detection to ready",
               [f"t2vserve_last_recovery_seconds{s}" for s in per_model("last_recovery_s")])
        family("t2vserve_shm_regions_reclaimed_total", "counter",
               "/dev/shm regions of dead stubs removed",
               [f"t2vserve_shm_regions_reclaimed_total {m['shm_reclaimed']}"])
        family("t2vserve_server_restarts_total", "counter", "tritonserver restarts",
               [f"t2vserve_server_restarts_total {m['server_restarts']}"])
        family("t2vserve_serving", "gauge", "1 while serving (not starting, recovering, draining)",
               [f"t2vserve_serving {int(self.state == 'serving')}"])
        family("t2vserve_draining", "gauge", "1 while draining for shutdown",
               [f"t2vserve_draining {int(self.state == 'draining')}"])
        return "\n".join(lines) + "\n"

    def _serve_metrics(self) -> ThreadingHTTPServer:
        sup = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/metrics":
                    body, code = sup.prometheus().encode(), 200
                elif self.path == "/healthz":
                    code = 200 if sup.state == "serving" else 503
                    body = json.dumps({"state": sup.state}).encode()
                else:
                    body, code = b"not found\n", 404
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        http = ThreadingHTTPServer((self.cfg.address, self.cfg.supervisor_port), Handler)
        threading.Thread(target=http.serve_forever, daemon=True).start()
        return http
