"""Fixtures for the jobs service's tests, imported where needed:

    from tests.jobs_fixtures import s3_server  # noqa: F401

`s3_server` runs a real moto S3 server (`moto_server`, the dev extra) on a free loopback port
for the session and yields its endpoint URL, with fake credentials in the environment so
boto3's usual chain finds them. `new_bucket(endpoint_url)` makes a fresh bucket per test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

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
