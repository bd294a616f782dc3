"""Start-up checks and security defaults that need no running generation."""

import subprocess
import sys
import time

import yaml

from t2vserve.profile import load_profile
from t2vserve.serve.server import ServerConfig, ShmError, check_shm, command, shm_requirement
from tests.integration.conftest import PROJECT


def _profile(tmp_path, **server):
    data = yaml.safe_load((PROJECT / "profiles" / "cpu-tiny.yaml").read_text())
    data["server"].update(server)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shm_requirement_follows_the_limits(tmp_path):
    need, why = shm_requirement(load_profile(_profile(tmp_path)))
    frames = 832 * 832 * 121 * 3
    assert need >= frames * 3 * 8  # frames cross at least three stub hops, eight t2v instances
    assert "832x832x121" in why


def test_undersized_shared_memory_fails_at_start_with_the_numbers(tmp_path, record):
    path = _profile(tmp_path, shm_bytes=64 << 20)  # docker's default /dev/shm
    try:
        check_shm(load_profile(path))
        raise AssertionError("check_shm accepted 64 MiB")
    except ShmError as exc:
        assert "64 MiB" in str(exc) and "--shm-size" in str(exc)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "t2vserve.cli", "serve", "--profile", str(path),
                           "--repo", str(tmp_path / "repo")], capture_output=True, text=True,
                          timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 2
    assert "shared memory too small" in proc.stderr and "needs" in proc.stderr
    assert not (tmp_path / "repo").exists()  # refused before anything started
    record("shm_undersized", what="`t2vserve serve` with server.shm_bytes 64 MiB (Docker's "
                                  "default /dev/shm) and the default limits",
           exit_code=proc.returncode, took_s=round(took, 1),
           message=proc.stderr.strip().splitlines()[-1][:600])


def test_defaults_bind_loopback_and_restrict_model_control(tmp_path):
    cfg = ServerConfig.from_profile(load_profile(_profile(tmp_path)), tmp_path)
    args, _ = command(cfg)
    assert "--http-address=127.0.0.1" in args and "--grpc-address=127.0.0.1" in args
    assert "--metrics-address=127.0.0.1" in args
    # without the supervisor's token there is no model control at all
    assert not any(a.startswith("--model-control-mode") for a in args)
    cfg.control_token = "t0ken"
    args, _ = command(cfg)
    assert "--model-control-mode=explicit" in args
    assert "--http-restricted-api=model-repository:x-t2vserve-control=t0ken" in args
    assert "--grpc-restricted-protocol=model-repository:x-t2vserve-control=t0ken" in args
