"""A real tritonserver on free loopback ports, serving the session's tiny export."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from t2vserve.profile import Profile, load_profile
from t2vserve.serve.repository import render_repository
from t2vserve.serve.server import ServerConfig, free_ports, start, stop, wait_ready  # noqa: F401

PROJECT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    profile: Profile
    config: ServerConfig
    artifacts: Path
    log: Path
    pid: int = 0  # tritonserver's

    @property
    def grpc_url(self) -> str:
        return f"{self.config.address}:{self.config.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.config.address}:{self.config.http_port}"

    def log_tail(self, n: int = 4000) -> str:
        return self.log.read_bytes()[-n:].decode("utf-8", "replace")


def make_profile(tmp: Path, artifacts: Path, **model_overrides) -> Profile:
    data = yaml.safe_load((PROJECT / "profiles" / "cpu-tiny.yaml").read_text())
    data["model"]["artifacts"] = str(artifacts)
    for name, values in model_overrides.items():
        data["models"][name].update(values)
    path = tmp / "profiles" / "test.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return load_profile(path)


@pytest.fixture(scope="session")
def server(tiny_artifacts, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    profile = make_profile(tmp, tiny_artifacts)
    repo = render_repository(profile, tmp / "model_repository")
    http, grpc, metrics = free_ports(3)
    cfg = ServerConfig.from_profile(profile, repo, http_port=http, grpc_port=grpc,
                                    metrics_port=metrics)
    log = tmp / "tritonserver.log"
    proc = start(cfg, log)
    try:
        wait_ready(cfg, proc)
    except Exception:
        stop(proc)
        raise RuntimeError(f"server did not start:\n{log.read_bytes()[-6000:].decode()}")
    yield Server(profile, cfg, tiny_artifacts, log, proc.pid)
    stop(proc)


@pytest.fixture
def client(server):
    from t2vserve.client import T2VClient

    c = T2VClient(server.grpc_url)
    yield c
    c.close()
