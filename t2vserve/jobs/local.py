"""`t2vserve jobs-local` (`make jobs`): the whole jobs service on one machine for a demo or a
small deployment: Redis (AOF), one worker on a running Triton server (`make serve`'s by
default) and the API, started together and stopped together (Ctrl-C or SIGTERM)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from t2vserve.jobs import redis_server
from t2vserve.jobs.auth import new_key

CURL = """\
try it (another terminal):
  export T2V_API_KEY={key}
  curl -s -X POST http://{host}:{port}/v1/videos -H "Authorization: Bearer $T2V_API_KEY" \\
       -H 'Content-Type: application/json' -d '{{"prompt": "a red ceramic mug on a wooden table", "seconds": 1, "fps": 8}}'
  curl -s http://{host}:{port}/v1/videos/<id> -H "Authorization: Bearer $T2V_API_KEY"
  curl -s -o clip.mp4 http://{host}:{port}/v1/videos/<id>/content -H "Authorization: Bearer $T2V_API_KEY"
"""


def wait_healthy(url: str, proc: subprocess.Popen, log: Path | None = None,
                 timeout_s: float = 30.0) -> None:
    """Until the jobs API at `url` answers 200 on /healthz; RuntimeError (with the tail of
    its `log`) if it exits first or takes longer than `timeout_s`."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "" if log is None else ":\n" + log.read_bytes()[-3000:].decode("utf-8",
                                                                                "replace")
            raise RuntimeError(f"the jobs API exited with {proc.returncode}{tail}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the jobs API at {url} was not healthy within {timeout_s:.0f} s")


def run(*, server: str, host: str, port: int, redis_port: int, folder: Path,
        workers: int = 1) -> int:
    folder = Path(folder).resolve()
    env = dict(os.environ)
    key = env.get("T2V_API_KEY")
    if not key:
        key = env["T2V_API_KEY"] = new_key()
        print(f"T2V_API_KEY was unset: this run's API key is {key}", flush=True)
    if not env.get("T2V_WEBHOOK_SECRET"):
        env["T2V_WEBHOOK_SECRET"] = new_key()
        print(f"T2V_WEBHOOK_SECRET was unset: webhooks are signed with "
              f"{env['T2V_WEBHOOK_SECRET']}", flush=True)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    storage = str(folder / "storage")
    exe = [sys.executable, "-m", "t2vserve.cli"]
    procs: list[tuple[str, subprocess.Popen]] = []
    stop = {"now": False}

    def on_signal(*_):
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        procs.append(("redis", redis_server.start(folder / "redis", redis_port)))
        print(f"redis on 127.0.0.1:{redis_port} (AOF in {folder / 'redis'})", flush=True)
        for _ in range(workers):
            procs.append(("worker", subprocess.Popen(
                [*exe, "jobs-worker", "--redis", redis_url, "--storage", storage,
                 "--server", server], env=env)))
        api = subprocess.Popen([*exe, "jobs", "--redis", redis_url, "--storage", storage,
                                "--url", server.split("=")[0], "--host", host,
                                "--port", str(port)], env=env)
        procs.append(("api", api))
        wait_healthy(f"http://{host}:{port}", api)
        print(CURL.format(key=key, host=host, port=port), flush=True)
        while not stop["now"]:
            dead = [(name, p) for name, p in procs if p.poll() is not None]
            if dead:
                name, proc = dead[0]
                print(f"jobs-local: the {name} exited ({proc.returncode}); stopping", flush=True)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        for _, proc in reversed(procs):  # API, workers (they finish their jobs), then Redis
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        print("jobs-local: stopped", flush=True)
