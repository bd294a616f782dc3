"""Fixtures for the jobs service's tests, imported where needed:

    from tests.jobs_fixtures import s3_server  # noqa: F401

`jobs` (module scope, needs the session's `server`) runs the jobs service as users run it:
Redis (AOF) on a free port, two `t2vserve jobs` APIs (one refusing private webhook URLs, one
accepting them for test receivers) and two `t2vserve jobs-worker` processes on that server;
`api`, `submit`, `wait_job` and `dit_calls` talk to it.

`s3_server` runs a real moto S3 server (`moto_server`, the dev extra) on a free loopback port
for the session and yields its endpoint URL, with fake credentials in the environment so
boto3's usual chain finds them. `new_bucket(endpoint_url)` makes a fresh bucket per test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from t2vserve.jobs import redis_server
from t2vserve.jobs.local import wait_healthy
from t2vserve.serve.server import free_ports

S3_REGION = "us-east-1"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    moto = Path(sys.executable).parent / "moto_server"
    if not moto.exists():
        pytest.fail(f"{moto} is missing: install the dev extra (moto[server])")
    port = free_ports(1)[0]
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with pytest.MonkeyPatch.context() as mp:
        # hermetic: fake credentials, no profile or config file from the machine
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", S3_REGION)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [str(moto), "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_ready(endpoint, proc, log_path)
            yield endpoint
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_ready(endpoint: str, proc: subprocess.Popen, log_path: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"moto_server exited ({proc.returncode}):\n{log_path.read_text()}")
        try:
            # moto's own status endpoint; any HTTP answer means it is serving
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"moto_server not ready in {timeout_s} s:\n{log_path.read_text()}")


def new_bucket(endpoint_url: str) -> str:
    """Create a uniquely named bucket on the server; returns its name."""
    import boto3  # type: ignore[import-untyped]

    name = f"t2v-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint_url, region_name=S3_REGION).create_bucket(Bucket=name)
    return name


# ---- the jobs service ----------------------------------------------------------------
KEYS = {"alice": "key-alice-0123456789", "bob": "key-bob-0123456789"}
SECRET = "whsec-test-0123456789"
SMALL = {"size": "64x64", "num_frames": 5, "steps": 2}
HEARTBEAT_MS = 3000
T2VSERVE = str(Path(sys.executable).parent / "t2vserve")


@dataclass
class Jobs:
    url: str              # the API: webhooks to private addresses refused
    private_url: str      # a second API on the same Redis that accepts them (test receivers)
    redis_port: int
    redis_dir: Path
    storage: Path
    grpc_url: str
    tmp: Path
    env: dict
    redis: subprocess.Popen | None = None
    workers: list = field(default_factory=list)
    apis: list = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start_worker(self) -> subprocess.Popen:
        n = len(self.workers)
        log = open(self.tmp / f"worker{n}.log", "ab")
        proc = subprocess.Popen(
            [T2VSERVE, "jobs-worker", "--redis", self.redis_url, "--storage", str(self.storage),
             "--server", f"{self.grpc_url}=1", "--heartbeat-timeout-ms", str(HEARTBEAT_MS),
             "--allow-private-webhooks", "--webhook-backoff", "0.2,0.4,0.8"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(proc)
        return proc

    def live_workers(self) -> list[subprocess.Popen]:
        return [w for w in self.workers if w.poll() is None]

    def start_redis(self) -> None:
        self.redis = redis_server.start(self.redis_dir, self.redis_port)


def api(url: str, path: str, method: str = "GET", key: str | None = "alice", **kw):
    headers = kw.pop("headers", {})
    if key is not None:
        headers["Authorization"] = f"Bearer {KEYS.get(key, key)}"
    return requests.request(method, url + path, headers=headers, timeout=30, **kw)


def submit(url: str, body: dict, key: str = "alice", **kw) -> dict:
    r = api(url, "/v1/videos", "POST", key, json=body, **kw)
    assert r.status_code in (200, 202), r.text
    return r.json()


def wait_job(url: str, job_id: str, statuses=("completed", "failed", "cancelled"),
             timeout: float = 120.0, key: str = "alice") -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = api(url, f"/v1/videos/{job_id}", key=key).json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}")
        time.sleep(0.1)


def dit_calls(grpc_url: str) -> int:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(grpc_url) as c:
        s = c.get_inference_statistics(model_name="dit", as_json=True)["model_stats"][0]
    return int(s.get("inference_count", 0))


def start_api(jobs: Jobs, port: int, *extra: str) -> str:
    log = open(jobs.tmp / f"api{port}.log", "ab")
    proc = subprocess.Popen(
        [T2VSERVE, "jobs", "--port", str(port), "--redis", jobs.redis_url,
         "--storage", str(jobs.storage), "--url", jobs.grpc_url, *extra],
        env=jobs.env, stdout=log, stderr=subprocess.STDOUT)
    jobs.apis.append(proc)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, proc, jobs.tmp / f"api{port}.log")
    return url


@pytest.fixture(scope="module")
def jobs(server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jobs")
    redis_port, api_port, private_port = free_ports(3)
    env = {**os.environ, "T2V_API_KEYS": ",".join(f"{o}={k}" for o, k in KEYS.items()),
           "T2V_WEBHOOK_SECRET": SECRET}
    env.pop("T2V_API_KEY", None)
    j = Jobs("", "", redis_port, tmp / "redis", tmp / "storage", server.grpc_url, tmp, env)
    j.start_redis()
    try:
        j.url = start_api(j, api_port)
        j.private_url = start_api(j, private_port, "--allow-private-webhooks")
        j.start_worker()
        j.start_worker()
        yield j
    finally:
        for proc in [*j.workers, *j.apis]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        if j.redis is not None:
            j.redis.kill()
            j.redis.wait()


