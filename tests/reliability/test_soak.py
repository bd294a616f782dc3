"""Soak: 32 concurrent clients for 10 minutes (T2VSERVE_SOAK_S to change), `make soak`.

Not part of `make test` (marked soak). Every response must come back, none may fail, the
same (prompt, seed) must give the same MP4 bytes all the way through, and the resident memory
of tritonserver and its stubs may grow by less than 5 % after warm-up.
"""

import os
import threading
import time

import pytest

from tests.reliability.conftest import infer, rss_kb

CLIENTS = 32
PROMPTS = ["a red cup rotating slowly on a wooden table", "蓝色保温杯在白色摄影棚里缓慢旋转",
           "a green bottle on a grey background, zooming in", "黄色球在木桌上静止"]


@pytest.mark.slow
@pytest.mark.soak
def test_soak(serve_factory, record):
    duration = float(os.environ.get("T2VSERVE_SOAK_S", 600))
    s = serve_factory(name="soak")
    pids = lambda: [s.server_pid()] + [p for m in ("t2v", "text_encoder", "dit", "vae_decoder",
                                                   "video_encoder") for p in s.stub_pids(m)]
    lock = threading.Lock()
    first_bytes, mismatches, errors = {}, [], []
    counts = {"sent": 0, "ok": 0}
    latencies = []
    stop_at = [None]

    def client(i: int):
        n = 0
        while time.monotonic() < stop_at[0]:
            key = (PROMPTS[(i + n) % len(PROMPTS)], (i * 7 + n) % 6)
            n += 1
            with lock:
                counts["sent"] += 1
            status, message, seconds, result = infer(s.grpc_url, prompt=key[0], seed=key[1])
            with lock:
                if status != "ok":
                    errors.append(f"{status}: {message}")
                    continue
                counts["ok"] += 1
                latencies.append(seconds)
                video = result.as_numpy("video").reshape(-1)[0]
                if first_bytes.setdefault(key, video) != video:
                    mismatches.append(key)

    # warm-up: a minute (or a tenth of a short run) of full load, then the RSS baseline
    warmup = min(60.0, duration / 10)
    t0 = time.monotonic()
    stop_at[0] = t0 + warmup + duration
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    rss_start = rss_kb(pids())
    sent_at_baseline = counts["sent"]
    samples = []
    while time.monotonic() < stop_at[0]:
        time.sleep(min(30.0, max(0.1, stop_at[0] - time.monotonic())))
        samples.append(rss_kb(pids()))
    for t in threads:
        t.join(600)
    rss_end = rss_kb(pids())
    took = time.monotonic() - t0
    growth = rss_end / rss_start - 1
    assert not errors, errors[:5]
    assert counts["ok"] == counts["sent"]
    assert not mismatches, mismatches[:5]
    assert growth < 0.05, (rss_start, rss_end, samples)
    assert s.ready()
    latencies.sort()
    record("soak", what=f"{CLIENTS} concurrent clients for {duration:.0f} s after "
                        f"{warmup:.0f} s warm-up, 4 prompts x 6 seeds repeating, default size",
           clients=CLIENTS, duration_s=round(took, 1), requests=counts["sent"],
           responses=counts["ok"], failures=len(errors), byte_mismatches=len(mismatches),
           distinct_requests=len(first_bytes),
           throughput_per_s=round(counts["ok"] / took, 3),
           p50_s=round(latencies[len(latencies) // 2], 2),
           p99_s=round(latencies[int(len(latencies) * 0.99) - 1], 2),
           rss_after_warmup_mb=round(rss_start / 1024, 1), rss_end_mb=round(rss_end / 1024, 1),
           rss_growth_pct=round(100 * growth, 2), requests_before_baseline=sent_at_baseline)
