"""Stub crash under load and SIGTERM under load, against `t2vserve serve`."""

import concurrent.futures as cf
import os
import signal
import time

import pytest

from tests.reliability.conftest import infer


def test_kill_9_of_a_stub_under_load(serve_factory, record):
    """The dit stub dies with 4 requests in flight: t2v waits for the supervisor's reload and
    retries the step (an idempotent call), so all 4 complete, later than they would have."""
    s = serve_factory({"models": {"t2v": {"instances": 4}}})
    shm_before = s.shm_segments()
    assert s.stub_pids("dit") and shm_before
    with cf.ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(infer, s.grpc_url, steps=50, width=256, height=256, num_frames=33,
                            seed=i) for i in range(4)]
        deadline = time.monotonic() + 60
        while s.stats("dit")["success"] < 8 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the loops are well into their 50 steps
        assert not any(f.done() for f in busy)
        (victim,) = s.stub_pids("dit")
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        # the supervisor notices, reloads dit, and readiness comes back
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if "t2vserve_model_reloads_total{model=\"dit\"} 1" in s.supervisor_metrics() \
                    and s.model_ready("dit") and s.http("/healthz", "supervisor")[0] == 200:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"dit not recovered:\n{s.supervisor_metrics()}\n{s.log_tail()}")
        recovery_s = time.monotonic() - killed_at
        results = [f.result() for f in busy]
        done_after_kill_s = time.monotonic() - killed_at
    # every in-flight request completes, with the video it would have made without the kill
    failed = [r for r in results if r[0] != "ok"]
    assert not failed, failed
    assert all(r[3].as_numpy("video").reshape(-1)[0] for r in results)
    assert s.stub_pids("dit") and s.stub_pids("dit") != [victim]
    assert 't2vserve_stub_crashes_total{model="dit"} 1' in s.supervisor_metrics()
    again = infer(s.grpc_url, steps=50, width=256, height=256, num_frames=33, seed=0)
    assert again[0] == "ok" and again[3].as_numpy("video").reshape(-1)[0] == \
        results[0][3].as_numpy("video").reshape(-1)[0]
    # later requests succeed
    later = [infer(s.grpc_url, seed=100 + i) for i in range(3)]
    assert all(r[0] == "ok" for r in later), later
    # the dead stub's shared-memory region is not left behind
    assert len(s.shm_segments()) <= len(shm_before), (shm_before, s.shm_segments())
    record("stub_crash", what="kill -9 of the dit stub with 4 requests in flight (50 steps, "
                              "256x256x33); then the first again and 3 more requests",
           requests=len(results) + 1 + len(later), in_flight_ok=len(results) - len(failed),
           failed=len(failed), recovery_s=round(recovery_s, 1),
           in_flight_done_after_kill_s=round(done_after_kill_s, 1),
           longest_in_flight_s=round(max(r[2] for r in results), 1),
           same_video_as_rerun=True, rerun_alone_s=round(again[2], 1), later_ok=sum(r[0] == "ok" for r in later),
           shm_segments_before=len(shm_before), shm_segments_after=len(s.shm_segments()))


def test_sigterm_under_load_finishes_in_flight_and_refuses_new(serve_factory, record):
    s = serve_factory({"models": {"t2v": {"instances": 3}}})
    with cf.ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(infer, s.grpc_url, steps=30, width=192, height=192, seed=i)
                for i in range(3)]
        time.sleep(1.5)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        # readiness goes false first, then new requests are refused
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and s.model_ready("t2v"):
            time.sleep(0.05)
        readiness_false_s = time.monotonic() - t0
        assert not s.model_ready("t2v")
        late = infer(s.grpc_url, seed=99)
        results = [f.result() for f in busy]
    assert all(r[0] == "ok" for r in results), results
    assert late[0] != "ok" and late[2] < 5, late
    assert s.proc.wait(120) == 0, s.log_tail()
    record("sigterm", what="SIGTERM to `t2vserve serve` with 3 requests in flight (30 steps, "
                           "192x192), then one new request",
           in_flight=len(results), in_flight_ok=sum(r[0] == "ok" for r in results),
           readiness_false_after_s=round(readiness_false_s, 2),
           new_request=f"{late[0]}: {late[1]}", exit_code=s.proc.returncode,
           longest_in_flight_s=round(max(r[2] for r in results), 1))
