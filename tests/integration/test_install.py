"""The packages as a user installs them: a wheel, not this source tree.

The client install (`pip install t2vserve`) goes into a fresh virtual environment without
torch and talks to the session's real server; the server package, installed non-editable
into a folder of its own, renders a repository and serves a clip from outside the tree.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import PROJECT, free_ports

pytestmark = pytest.mark.slow

_NOT_SOURCES = shutil.ignore_patterns(".venv", "build", ".git", "*.egg-info", "__pycache__",
                                      ".pytest_cache", ".hypothesis", "*.onnx")


def _run(args, *, cwd, env=None, timeout=600, check=True):
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """`pip wheel` of a copy of the sources, so no stale build/ folder leaks into it."""
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(PROJECT, tmp / "src", ignore=_NOT_SOURCES)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / "dist",
          tmp / "src"], cwd=tmp)
    (found,) = (tmp / "dist").glob("t2vserve-*.whl")
    return found


@pytest.fixture(scope="module")
def client_venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv with only the client install: `pip install t2vserve-*.whl`."""
    venv = tmp_path_factory.mktemp("client") / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=venv.parent)
    _run([venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", wheel],
         cwd=venv.parent, env=_clean_env())
    return venv


CLIENT_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    assert importlib.util.find_spec("torch") is None, "torch is installed"
    from t2vserve.client import InvalidRequest, T2VClient
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in
                   ("torch", "onnx", "onnxruntime", "diffusers", "transformers", "av"))
    with T2VClient(sys.argv[1]) as client:
        video = client.generate("a red cup on a wooden table", width=64, height=64,
                                num_frames=5, steps=1, seed=3)
        try:
            client.generate("a red cup", width=100)
            refused = None
        except InvalidRequest as exc:
            refused = {"param": exc.param, "allowed": exc.allowed, "status": exc.status}
    import t2vserve.client
    print(json.dumps({"file": t2vserve.client.__file__, "heavy": heavy,
                      "mp4": video.mp4[4:8].decode(), "bytes": len(video.mp4),
                      "model": video.model, "frames": video.request["num_frames"],
                      "refused": refused}))
""")


def test_client_install_has_no_torch_and_generates(client_venv, server, tmp_path):
    r = _run([client_venv / "bin" / "python", "-c", CLIENT_SCRIPT, server.grpc_url],
             cwd=tmp_path, env=_clean_env())
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(client_venv)), out["file"]  # the wheel, not the tree
    assert out["heavy"] == []
    assert out["mp4"] == "ftyp" and out["bytes"] > 1000 and out["frames"] == 5
    assert out["model"] and out["model"].startswith("tiny")
    assert out["refused"] == {"param": "width", "allowed": "a multiple of 32 in [64, 832]",
                              "status": "INVALID_ARGUMENT"}


def test_client_install_cli_generates_and_names_the_server_install(client_venv, server, tmp_path):
    cli = client_venv / "bin" / "t2vserve"
    r = _run([cli, "generate", "a blue mug", "-o", tmp_path / "mug.mp4", "--url", server.grpc_url,
              "--width", "64", "--height", "64", "--num-frames", "5", "--steps", "1"],
             cwd=tmp_path, env=_clean_env())
    assert "wrote" in r.stdout and (tmp_path / "mug.mp4").read_bytes()[4:8] == b"ftyp"
    r = _run([cli, "export", "--preset", "tiny", "--out", tmp_path / "a"], cwd=tmp_path,
             env=_clean_env(), check=False)
    assert r.returncode == 2
    assert "needs the server install (pip install 't2vserve[server]')" in r.stderr
    assert "Traceback" not in r.stderr


def _mypy(client_venv, *args, cwd):
    return _run([Path(sys.executable).parent / "mypy", "--config-file", PROJECT / "pyproject.toml",
                 "--python-executable", client_venv / "bin" / "python", "--no-incremental",
                 *args], cwd=cwd, check=False)


def test_client_package_type_checks(client_venv, tmp_path):
    # the public API strictly; the whole installed package in mypy's default mode
    strict = _mypy(client_venv, "--strict", "-m", "t2vserve.client", "-m", "t2vserve.client.core",
                   cwd=tmp_path)
    assert strict.returncode == 0, strict.stdout
    whole = _mypy(client_venv, "-p", "t2vserve.client", cwd=tmp_path)
    assert whole.returncode == 0, whole.stdout
    # and a caller's mistake is caught: the parameters are typed, not **kwargs
    user = tmp_path / "user.py"
    user.write_text("from t2vserve.client import T2VClient\n"
                    "T2VClient().generate('a cup', width='wide', sed=3)\n")
    wrong = _mypy(client_venv, str(user), cwd=tmp_path)
    assert wrong.returncode == 1
    assert 'Argument "width" to "generate" of "T2VClient" has incompatible type "str"' in wrong.stdout
    assert 'Unexpected keyword argument "sed"' in wrong.stdout


@pytest.fixture(scope="module")
def server_site(wheel, tmp_path_factory) -> Path:
    """The server package installed non-editable into a folder of its own; its dependencies
    are the test venv's (they are the server extra's pins)."""
    site = tmp_path_factory.mktemp("server") / "site"
    _run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
          "--no-deps", "--target", site, wheel], cwd=site.parent)
    return site


def test_server_wheel_renders_and_serves_from_outside_the_tree(server_site, tiny_artifacts,
                                                                  tmp_path):
    outside = tmp_path / "deploy"
    (outside / "build" / "artifacts").mkdir(parents=True)
    (outside / "build" / "artifacts" / "tiny").symlink_to(tiny_artifacts)
    env = _clean_env(PYTHONPATH=str(server_site))
    py = [sys.executable, "-m", "t2vserve.cli"]
    where = _run([sys.executable, "-c", "import t2vserve.serve.repository as r; print(r.TEMPLATES)"],
                 cwd=outside, env=env)
    assert where.stdout.strip() == str(server_site / "t2vserve" / "model_repository")

    # a shipped profile by name: its relative paths start at the working directory
    _run([*py, "repo", "build", "--profile", "cpu-tiny", "--out", "repo"], cwd=outside, env=env)
    copy = yaml.safe_load((outside / "repo" / "profile.yaml").read_text())
    assert copy["root"] == str(outside) and copy["name"] == "cpu-tiny"
    assert sorted(p.name for p in (outside / "repo").iterdir() if p.is_dir()) == [
        "dit", "t2v", "t2v_stream", "text_encoder", "vae_decoder", "video_encoder"]

    # and serves: the stubs import the installed package too
    data = yaml.safe_load((server_site / "t2vserve" / "profiles" / "cpu-tiny.yaml").read_text())
    http, grpc, metrics, supervisor = free_ports(4)
    data["server"].update(http_port=http, grpc_port=grpc, metrics_port=metrics,
                          supervisor_port=supervisor)
    for name in data["models"]:
        data["models"][name]["instances"] = 1
    (outside / "profiles").mkdir()
    (outside / "profiles" / "mine.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    log = outside / "serve.log"
    proc = subprocess.Popen([*py, "serve", "--profile", "profiles/mine.yaml", "--repo", "served"],
                            cwd=outside, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        from t2vserve.client import T2VClient

        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, log.read_text()[-4000:]
            assert time.monotonic() < deadline, log.read_text()[-4000:]
            try:
                with T2VClient(f"127.0.0.1:{grpc}") as client:
                    if client.client.is_model_ready("t2v"):
                        video = client.generate("a green teapot", width=64, height=64,
                                                num_frames=5, steps=1)
                        break
            except Exception:
                pass
            time.sleep(1)
        assert video.mp4[4:8] == b"ftyp" and video.request["num_frames"] == 5
        stub_paths = (outside / "served" / "profile.yaml").read_text()
        assert f"root: {outside}" in stub_paths
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(120)
