"""A fleet on loopback (issue 23, Show 3): two `t2vserve serve`, one client given both, and
Envoy (deploy/envoy/envoy.yaml) in front of the same two. Both servers take requests, and a
server SIGKILLed mid-run loses none: the client's retry, or Envoy's, runs it on the other.

The two servers are started once for the module, side by side (~45 s on 2 cores, most of
the module's time); the kill comes last, in one run of both paths at once, so no server is
started twice."""

import asyncio
import os
import random
import signal
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from t2vserve.client import AsyncT2VClient, RetryPolicy
from t2vserve.client.core import NO_RETRY
from tests.integration.conftest import PROJECT, free_ports
from tests.reliability.conftest import Served, start_served

ENVOY = PROJECT / ".venv" / "bin" / "envoy"
SHIPPED = PROJECT / "deploy" / "envoy" / "envoy.yaml"
# few stubs per server: startup is most of this module's time
SMALL = {"models": {"t2v": {"instances": 2}, "t2v_stream": {"instances": 1},
                    "vae_decoder": {"instances": 1}, "video_encoder": {"instances": 1}}}
REQUESTS, CONCURRENCY = 40, 4
SMALL_CLIP = dict(width=64, height=64, num_frames=5, steps=1)


@dataclass(frozen=True)
class CountedRetry(RetryPolicy):
    """The client's retry policy, counting the retries it makes."""
    retries: list = field(default_factory=list)

    def delay(self, attempt: int, rng=random) -> float:
        self.retries.append(attempt)
        return super().delay(attempt, rng)


def successes(server: Served) -> int:
    return int(server.triton_metric("nv_inference_request_success", model="t2v"))


def kill(server: Served) -> None:
    """SIGKILL the supervisor and tritonserver with its stubs (each leads its own group)."""
    triton = server.server_pid()
    os.killpg(server.proc.pid, signal.SIGKILL)
    os.killpg(triton, signal.SIGKILL)


async def run(url: str, tag: str, retry: RetryPolicy, *, on_done=None) -> list:
    """REQUESTS distinct small clips over one client, CONCURRENCY at a time: the result or
    the error of each. on_done(n) is called as the n-th finishes."""
    sem, finished = asyncio.Semaphore(CONCURRENCY), [0]

    async def one(client: AsyncT2VClient, i: int):
        async with sem:
            try:
                return await client.generate(f"fleet {tag} {i}: a red cup on a table", seed=i,
                                             timeout=120, **SMALL_CLIP)
            except Exception as exc:  # kept, so that one failure does not hide the rest
                return exc
            finally:
                finished[0] += 1
                if on_done:
                    on_done(finished[0])

    async with AsyncT2VClient(url, retry=retry) as client:
        return await asyncio.gather(*(one(client, i) for i in range(REQUESTS)))


def lost(results: list) -> list:
    return [r for r in results if isinstance(r, Exception)]


@pytest.fixture(scope="module")
def fleet(tiny_artifacts, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    with ThreadPoolExecutor(2) as pool:  # side by side: half the wall time on 2 cores
        starting = [pool.submit(start_served, tmp / name, tiny_artifacts, SMALL)
                    for name in ("a", "b")]
        servers = [f.result() for f in starting]
    yield servers
    for s in servers:  # a drain is not what this module tests: kill, and clean up after
        if s.proc.poll() is None:
            kill(s)
        s.proc.wait(10)
        for name in s.shm_segments():  # what the stubs' shared memory left behind
            Path("/dev/shm", name).unlink(missing_ok=True)


def loopback_envoy(shipped: dict, port: int, admin_port: int, upstreams: list[str]) -> dict:
    """The shipped config with loopback addresses and ports; every policy kept."""
    config = yaml.safe_load(yaml.safe_dump(shipped))
    config["admin"]["address"]["socket_address"] = {"address": "127.0.0.1",
                                                    "port_value": admin_port}
    listener = config["static_resources"]["listeners"][0]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
    cluster = config["static_resources"]["clusters"][0]
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(p)}}}}
        for host, p in (u.rsplit(":", 1) for u in upstreams)]
    return config


@dataclass
class Envoy:
    url: str
    admin_port: int

    def stat(self, name: str) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats?filter=^{name}$",
                                    timeout=5) as r:
            line = r.read().decode().strip()
        return int(line.rsplit(": ", 1)[1]) if line else 0


@pytest.fixture(scope="module")
def envoy(fleet, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("envoy")
    port, admin = free_ports(2)
    config = loopback_envoy(yaml.safe_load(SHIPPED.read_text()), port, admin,
                            [s.grpc_url for s in fleet])
    path = tmp / "envoy.yaml"
    path.write_text(yaml.safe_dump(config))
    log = tmp / "envoy.log"
    proc = subprocess.Popen([str(ENVOY), "-c", str(path), "--disable-hot-restart",
                             "--log-level", "warn"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:  # until both upstreams pass the gRPC health check
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"envoy did not see both servers healthy:\n"
                                   f"{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters",
                                            timeout=2) as r:
                    clusters = r.read().decode()
            except OSError:
                clusters = ""
            if clusters.count("::health_flags::healthy") == 2:
                break
            time.sleep(0.2)
        yield Envoy(f"127.0.0.1:{port}", admin)
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_loopback_envoy_keeps_every_policy_of_the_shipped_one():
    shipped = yaml.safe_load(SHIPPED.read_text())
    local = loopback_envoy(shipped, 1, 2, ["127.0.0.1:3", "127.0.0.1:4"])
    route = shipped["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    assert set(route["retry_policy"]["retry_on"].split(",")) == {
        "unavailable", "reset", "connect-failure"}
    assert route["retry_policy"]["retry_host_predicate"][0]["name"] == \
        "envoy.retry_host_predicates.previous_hosts"
    cluster = shipped["static_resources"]["clusters"][0]
    assert cluster["lb_policy"] == "LEAST_REQUEST" and "grpc_health_check" in \
        cluster["health_checks"][0]
    assert shipped["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    # only addresses and ports differ
    for config in (shipped, local):
        config["admin"]["address"] = None
        config["static_resources"]["listeners"][0]["address"] = None
        config["static_resources"]["clusters"][0]["load_assignment"] = None
    assert local == shipped


def test_one_client_spreads_requests_over_both_servers(fleet):
    before = [successes(s) for s in fleet]
    results = asyncio.run(run(",".join(s.grpc_url for s in fleet), "spread", CountedRetry()))
    assert lost(results) == []
    served = [successes(s) - b for s, b in zip(fleet, before)]
    # round robin: about half each; every request ran once
    assert sum(served) == REQUESTS and min(served) >= REQUESTS // 4, served


def test_a_server_killed_mid_run_loses_no_request(fleet, envoy):
    """The direct client and Envoy at once, one kill: SIGKILL server b (supervisor,
    tritonserver and stubs) once each path has finished a quarter of its requests. The
    direct client has gRPC's retry on UNAVAILABLE and its own RetryPolicy; the one behind
    Envoy has neither, so every request that survives there does so by Envoy's retry rule.
    (Measured with no retries anywhere: 2 direct and 19 proxied requests lost; with gRPC's
    retry off, the client's own retry alone lost none.)"""
    survivor, victim = fleet
    before = {"survivor": successes(survivor), "victim": successes(victim)}
    done = {"client": 0, "envoy": 0}
    killed: dict = {}

    def progress(path: str):
        def on_done(n: int) -> None:
            done[path] = n
            if not killed and min(done.values()) >= REQUESTS // 4:
                killed["victim_served"] = successes(victim) - before["victim"]
                kill(victim)
                killed["at"] = dict(done)
        return on_done

    async def both():
        retry = CountedRetry()
        direct, proxied = await asyncio.gather(
            run(",".join(s.grpc_url for s in fleet), "kill", retry, on_done=progress("client")),
            run(envoy.url, "envoy", NO_RETRY, on_done=progress("envoy")))
        return direct, proxied, retry.retries

    t0 = time.monotonic()
    direct, proxied, retries = asyncio.run(both())
    assert killed, "the run ended before the kill"
    victim.proc.wait(10)
    assert lost(direct) == [], lost(direct)[:3]
    assert lost(proxied) == [], lost(proxied)[:3]
    # every clip came back, and all that the victim did not finish ran on the survivor
    assert all(r.mp4[4:8] == b"ftyp" for r in direct + proxied)
    assert killed["victim_served"] > 0
    # the kill cut requests Envoy had sent to the victim, and Envoy ran them again
    retried = envoy.stat("cluster.t2vserve.upstream_rq_retry_success")
    assert retried >= 1
    # (the victim's count was read just before the kill: up to the requests it had in flight,
    # at most CONCURRENCY per path, may have finished in between)
    assert successes(survivor) - before["survivor"] >= \
        2 * REQUESTS - killed["victim_served"] - 2 * CONCURRENCY
    print(f"killed after {killed['at']} finished ({killed['victim_served']} on the victim); "
          f"client retries {len(retries)}, Envoy's {retried}; {time.monotonic() - t0:.1f} s")
