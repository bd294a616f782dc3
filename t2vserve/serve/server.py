"""Start tritonserver (the binary inside the nvidia-pytriton wheel) for a rendered repository.

CPU-only machines: Python backend only; the stub for this Python version is copied next to
the backend once; the venv's bin/ goes first on PATH so the stub imports the venv's packages.
"""

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from t2vserve.profile import Profile


def triton_home() -> Path:
    # located, not imported: pytriton's __init__ pulls in its own client and its dependencies
    # (pyzmq, typer, ...), which a carried slim tritonserver (gpu-check) does without
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("nvidia-pytriton is not installed: run `make setup`")
    home = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (home / "bin" / "tritonserver").exists():
        raise FileNotFoundError(f"tritonserver not found under {home}: run `make setup`")
    return home


def ensure_python_stub(home: Path) -> None:
    target = home / "backends" / "python" / "triton_python_backend_stub"
    if not target.exists():
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        source = home / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not source.exists():
            raise FileNotFoundError(f"no Python backend stub for Python {version} in {source.parent}")
        shutil.copy2(source, target)


@dataclass
class ServerConfig:
    repository: Path
    address: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    cache_bytes: int = 64 << 20
    exit_timeout_s: int = 30
    log_verbose: int = 0
    # Set by the supervisor: the repository (model control) API is then on, but answers only
    # requests carrying this token in CONTROL_HEADER; everyone else gets 403 / refusal.
    control_token: str | None = None
    supervisor_port: int = 8003
    drain_timeout_s: int = 600
    extra_args: tuple = ()

    @classmethod
    def from_profile(cls, profile: Profile, repository: Path, **overrides) -> "ServerConfig":
        s = profile.data["server"]
        values = dict(address=s["address"], http_port=s["http_port"], grpc_port=s["grpc_port"],
                      metrics_port=s["metrics_port"], cache_bytes=profile.data["cache"]["size_bytes"],
                      supervisor_port=s.get("supervisor_port", 8003),
                      drain_timeout_s=int(s.get("exit_timeout_s", 600)))
        values.update(overrides)
        return cls(repository=Path(repository), **values)

    @property
    def shm_prefix(self) -> str:
        # one prefix per server, so its /dev/shm regions can be told from other servers'
        return f"t2vserve_{self.grpc_port}_"


CONTROL_HEADER = "x-t2vserve-control"


def free_ports(n: int) -> list[int]:
    """n loopback ports free right now (the OS picks them), for a server of one's own."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _libpython_dir() -> str | None:
    """The stub embeds whatever libpython3.X.so the loader finds first (here Debian's 3.11.2)
    but imports the venv's stdlib extension modules, built against this interpreter (e.g.
    pyenv 3.11.7: `_ssl` then fails on a missing symbol). Put this interpreter's shared
    libpython first so both agree."""
    libdir = sysconfig.get_config_var("LIBDIR")
    name = f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"
    return libdir if libdir and (Path(libdir) / name).exists() else None


def command(cfg: ServerConfig) -> tuple[list[str], dict]:
    home = triton_home()
    ensure_python_stub(home)
    args = [
        str(home / "bin" / "tritonserver"),
        f"--model-repository={cfg.repository.resolve()}",
        f"--backend-directory={home / 'backends'}",
        f"--cache-directory={home / 'caches'}",
        f"--http-address={cfg.address}", f"--http-port={cfg.http_port}",
        f"--grpc-address={cfg.address}", f"--grpc-port={cfg.grpc_port}",
        f"--metrics-address={cfg.address}", f"--metrics-port={cfg.metrics_port}",
        f"--cache-config=local,size={cfg.cache_bytes}",
        f"--exit-timeout-secs={cfg.exit_timeout_s}",
        f"--log-verbose={cfg.log_verbose}",
        "--allow-gpu-metrics=false", "--allow-cpu-metrics=true",
        # per-model latency quantiles (nv_inference_request_summary_us{quantile=...}): the p95
        # deploy/prometheus alerts on; counters alone give only means
        "--metrics-config=summary_latencies=true",
        "--strict-readiness=true",
        # each Python stub talks to the server through its own /dev/shm region: start at
        # 16 MB and grow in 64 MB steps, so a full-size clip's frames fit in a few steps
        "--backend-config=python,shm-default-byte-size=16777216",
        "--backend-config=python,shm-growth-byte-size=67108864",
        f"--backend-config=python,shm-region-prefix-name={cfg.shm_prefix}",
    ]
    if cfg.control_token:
        args += ["--model-control-mode=explicit", "--load-model=*",
                 f"--http-restricted-api=model-repository:{CONTROL_HEADER}={cfg.control_token}",
                 f"--grpc-restricted-protocol=model-repository:{CONTROL_HEADER}={cfg.control_token}"]
    args += list(cfg.extra_args)
    site = Path(home).parent.parent  # site-packages
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (_libpython_dir(), str(site / "nvidia_pytriton.libs"),
                    env.get("LD_LIBRARY_PATH")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env.setdefault("OMP_NUM_THREADS", "1")
    return args, env


def wait_ready(cfg: ServerConfig, proc: subprocess.Popen | None = None,
               timeout_s: float = 180.0) -> None:
    url = f"http://{cfg.address}:{cfg.http_port}/v2/health/ready"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"tritonserver exited with code {proc.returncode} before ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"tritonserver not ready at {url} after {timeout_s:.0f} s")


def start(cfg: ServerConfig, log_path: Path | None = None) -> subprocess.Popen:
    args, env = command(cfg)
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL
    return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen, timeout_s: float = 60.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class ShmError(ValueError):
    pass


# Python stubs exchange tensors with the server through /dev/shm, each stub in its own
# region. A tensor one stub passes to another sits in the sender's region and in the
# receiver's (2 copies); one from or to the client only in t2v's (1). Regions grow to their
# peak and keep it, so the peaks of different stages add up: every crossing of a request
# counts, for every t2v request in flight; each stub also keeps its starting region.
SHM_DEFAULT_REGION = 16 << 20
SMALL_TENSORS = 64 << 10  # timestep, vae_ms, qc, info and request JSON together


def stub_tensors(profile: Profile, width: int, height: int,
                 num_frames: int) -> list[tuple[str, int, int]]:
    """(what, bytes, copies in /dev/shm) of every tensor one request of this size passes
    across a stub boundary: the largest admitted clip's sum is what check_shm asks for."""
    from t2vserve.presets import get_preset  # torch: the server install only

    p = get_preset(profile.data["model"]["preset"])
    s, t = p.vae["scale_factor_spatial"], p.vae["scale_factor_temporal"]
    latents = 4 * p.latent_channels * ((num_frames - 1) // t + 1) * (height // s) * (width // s)
    embeds = 4 * 2 * p.text_len * p.dit["text_dim"]  # FP32, prompt + negative
    frames = width * height * num_frames * 3
    return [
        ("prompts (client -> t2v -> text_encoder)", 2 * profile.limits.prompt_bytes, 3),
        ("prompt_embeds (text_encoder -> t2v)", embeds, 2),
        ("latents, a CFG pair per step (t2v -> dit)", 2 * latents, 2),
        ("prompt_embeds per step (t2v -> dit)", embeds, 2),
        ("noise_pred, a CFG pair per step (dit -> t2v)", 2 * latents, 2),
        ("latents (t2v -> vae_decoder)", latents, 2),
        # written once by vae_decoder, mapped by video_encoder, deleted by t2v (serve/frames.py)
        ("uint8 frames (vae_decoder -> frame store -> video_encoder)", frames, 1),
        # x264 at CRF 18 stays under the raw 4:2:0 frames (pure noise: 41% of them)
        ("MP4, at most the 4:2:0 frames (video_encoder -> t2v -> client)", frames // 2, 3),
        ("timestep, vae_ms, qc, info and request JSON", SMALL_TENSORS, 2),
    ]


def public_instances(profile: Profile) -> int:
    """Requests the server runs at once: t2v's instances and t2v_stream's (the streaming
    twin; as many as t2v's unless models.t2v_stream.instances says)."""
    return int(profile.model("t2v")["instances"]) + profile.stream_instances()


def shm_requirement(profile: Profile) -> tuple[int, str]:
    w, h, f = profile.limits.largest_clip()
    tensors = stub_tensors(profile, w, h, f)
    per_request = sum(size * copies for _, size, copies in tensors)
    frames = w * h * f * 3
    in_flight = public_instances(profile)
    stubs = sum(int(m["instances"]) for name, m in profile.data["models"].items()
                if name != "t2v_stream") + profile.stream_instances()
    need = per_request * in_flight + stubs * SHM_DEFAULT_REGION
    why = (f"the limits admit {w}x{h}x{f} clips, whose tensors crossing stub boundaries "
           f"(frames {frames / 2**20:.0f} MiB once in the frame store, the MP4, latents and embeddings) come "
           f"to {per_request / 2**20:.0f} MiB per request, x{in_flight} t2v and t2v_stream "
           f"instances in flight, and {stubs} stubs keep a {SHM_DEFAULT_REGION >> 20} MiB region each")
    return need, why


def check_shm(profile: Profile, shm_dir: str = "/dev/shm") -> int:
    """Fail at start, with the numbers, where Triton would fail mid-request (or hang)."""
    need, why = shm_requirement(profile)
    configured = profile.data["server"].get("shm_bytes")
    if configured is not None:
        have, source = int(configured), "server.shm_bytes"
    else:
        st = os.statvfs(shm_dir)
        have, source = st.f_bavail * st.f_frsize, f"free space in {shm_dir}"
    if need > have:
        raise ShmError(
            f"shared memory too small for profile {profile.name}: {source} is "
            f"{have / 2**20:.0f} MiB but {why}: needs {need / 2**20:.0f} MiB. Give the container "
            f"more (docker run --shm-size={-(-need // 2**30)}g), or lower limits.sizes/width/"
            f"height/num_frames or models.t2v.instances")
    return need
