"""t2v's queue policy from the profile: size limit, timeout, priority (one t2v instance, so
one request runs and the rest wait in Triton's queue)."""

import concurrent.futures as cf
import time

import pytest

from tests.reliability.conftest import infer

QUEUE = 2
LONG = dict(steps=50, width=256, height=256, num_frames=33)


@pytest.fixture(scope="module")
def served(module_serve):
    return module_serve({"models": {"t2v": {"instances": 1}},
                         "queue": {"max_queue_size": QUEUE}}, name="queue")


def _wait_running(served, before: int, timeout_s: float = 60):
    """Until the long request is inside its denoising loop (dit has been called)."""
    deadline = time.monotonic() + timeout_s
    while served.stats("dit")["success"] <= before and time.monotonic() < deadline:
        time.sleep(0.02)


def test_queue_full_rejects_the_excess_at_once(served, record):
    k = 3
    failures_before = served.triton_metric("nv_inference_request_failure", model="t2v")
    with cf.ThreadPoolExecutor(QUEUE + k + 1) as pool:
        before = served.stats("dit")["success"]
        running = pool.submit(infer, served.grpc_url, seed=1, **LONG)
        _wait_running(served, before)
        burst = [pool.submit(infer, served.grpc_url, seed=10 + i) for i in range(QUEUE + k)]
        results = [f.result() for f in burst]
        first = running.result()
    rejected = [r for r in results if r[0] == "UNAVAILABLE"]
    assert first[0] == "ok"
    assert len(rejected) == k, [r[:3] for r in results]
    assert all("Exceeds maximum queue size" in r[1] and r[2] < 1.0 for r in rejected), rejected
    assert sum(r[0] == "ok" for r in results) == QUEUE
    assert served.ready()
    failures_delta = served.triton_metric("nv_inference_request_failure", model="t2v") - failures_before
    record("queue_full", what=f"t2v: 1 instance, max_queue_size {QUEUE}; one request running, "
                              f"then {QUEUE + k} at once",
           requests=QUEUE + k + 1, rejected=len(rejected),
           rejected_in_s=round(max(r[2] for r in rejected), 3),
           succeeded=1 + sum(r[0] == "ok" for r in results),
           triton_failure_metric_delta=failures_delta)


def test_client_backs_off_and_retries_until_the_queue_has_room(served):
    from t2vserve.client import RetryPolicy, T2VClient

    with cf.ThreadPoolExecutor(QUEUE + 2) as pool:
        before = served.stats("dit")["success"]
        running = pool.submit(infer, served.grpc_url, seed=2, **LONG)
        _wait_running(served, before)
        fillers = [pool.submit(infer, served.grpc_url, seed=20 + i, **LONG) for i in range(QUEUE)]
        time.sleep(0.3)
        # the queue is full now: the client's first try gets UNAVAILABLE, it waits and retries.
        # Room opens only when the running request ends, so the retries are bounded by a
        # deadline, not a count: 12 tries (~20 s of jittered pauses on average) ran out on a
        # slow CI machine before one long request had finished
        with T2VClient(served.grpc_url, retry=RetryPolicy(attempts=200, base_delay_s=1.0,
                                                          max_delay_s=4.0)) as client:
            video = client.generate("a blue bottle on a grey background", seed=5, timeout=300)
        assert video.mp4[4:8] == b"ftyp"
        assert all(f.result()[0] == "ok" for f in [running, *fillers])


def test_queue_timeout_rejects_a_request_that_waited_too_long(served, record):
    rejected_before = served.triton_metric("nv_inference_request_failure", model="t2v",
                                           reason="REJECTED")
    with cf.ThreadPoolExecutor(2) as pool:
        before = served.stats("dit")["success"]
        running = pool.submit(infer, served.grpc_url, seed=3, **LONG)
        _wait_running(served, before)
        status, message, seconds, _ = infer(served.grpc_url, seed=30, timeout_us=500_000)
        assert running.result()[0] == "ok"
    assert status == "UNAVAILABLE" and "timeout" in message.lower(), message
    # rejected while the long request still ran, not after it
    assert seconds < 3.0, seconds
    rejected = served.triton_metric("nv_inference_request_failure", model="t2v",
                                    reason="REJECTED") - rejected_before
    assert rejected == 1
    record("queue_timeout", what="a request with a 0.5 s timeout behind a running long request",
           rejected_after_s=round(seconds, 2), message=message,
           triton_rejected_metric_delta=rejected)


def test_high_priority_sent_last_starts_before_the_normal_backlog(served, record):
    def timed(**kw):
        result = infer(served.grpc_url, **kw)
        return result, time.monotonic()  # when it finished

    with cf.ThreadPoolExecutor(4) as pool:
        before = served.stats("dit")["success"]
        running = pool.submit(infer, served.grpc_url, seed=4, **LONG)
        _wait_running(served, before)
        futures = {}
        for name, priority in (("normal_1", 2), ("normal_2", 2), ("high", 1)):
            futures[name] = pool.submit(timed, seed=40 + len(futures), priority=priority)
            time.sleep(0.2)
        assert running.result()[0] == "ok"
        finished = {}
        for name, f in futures.items():
            (status, message, _, _), at = f.result()
            assert status == "ok", (name, message)
            finished[name] = at
    order = sorted(finished, key=finished.get)
    assert order[0] == "high", order
    record("priority", what="one long request running; two normal-priority (2) requests "
                            "queued, then one high-priority (1)", completion_order=order)
