"""A Redis for the jobs queue: Debian's redis-server on loopback, append-only file on and
fsynced on every write, so a killed Redis restarted on the same directory loses no job."""

import shutil
import subprocess
import time
from pathlib import Path

import redis


def command(folder: Path, port: int) -> list[str]:
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    return [exe, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning"]


def start(folder: Path, port: int, log: Path | None = None) -> subprocess.Popen:
    """Start it and wait until it answers PING (RuntimeError after 20 s)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    out = open(log or folder / "redis.log", "ab")
    proc = subprocess.Popen(command(folder, port), stdout=out, stderr=subprocess.STDOUT)
    wait_ready(f"redis://127.0.0.1:{port}/0", proc)
    return proc


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        try:
            if client.ping():
                return
        except redis.RedisError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"Redis at {url} did not answer within {timeout:.0f} s")


def run_foreground(folder: Path, port: int) -> int:
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    print(f"redis on 127.0.0.1:{port}, AOF in {folder}", flush=True)
    try:
        return subprocess.call(command(folder, port))
    except KeyboardInterrupt:
        return 0
