"""Discrete-event simulation of the same queue the analytic model describes: one FCFS queue,
c identical channels, i.i.d. inter-arrival times (exponential, or gamma with the given SCV)
and service times resampled from measured latencies. Used to check the Allen–Cunneen
approximation where it is known to be loose (near-deterministic or bursty traffic)."""

import heapq
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SimResult:
    channels: int
    arrival_rate: float
    n_jobs: int
    utilisation: float
    p_wait: float
    mean_wait_s: float
    p50_wait_s: float
    p95_wait_s: float
    p99_wait_s: float
    mean_response_s: float
    p50_response_s: float
    p95_response_s: float
    p99_response_s: float


def interarrivals(rng: np.random.Generator, arrival_rate: float, scv: float, n: int) -> np.ndarray:
    mean = 1.0 / arrival_rate
    if scv == 0:
        return np.full(n, mean)
    if scv == 1:
        return rng.exponential(mean, n)
    # gamma(shape k, scale m/k) has mean m and SCV 1/k: k < 1 is burstier than Poisson
    shape = 1.0 / scv
    return rng.gamma(shape, mean / shape, n)


def waits_fcfs(arrivals: np.ndarray, service: np.ndarray, channels: int,
               busy_until=()) -> np.ndarray:
    """Wait of each job in arrival order: a job starts when it arrives or when the earliest
    channel frees, whichever is later (central FIFO queue, so no job overtakes another).
    busy_until: times at which channels busy at t=0 free up (at most `channels` of them)."""
    n = len(arrivals)
    busy = np.sort(np.asarray(busy_until, dtype=float)).tolist()
    if channels - len(busy) >= n:
        return np.zeros(n)  # a free channel for every job
    arr = arrivals.tolist()
    svc = service.tolist()
    out = [0.0] * n
    if channels == 1:
        # Lindley recursion; the same as the heap with one entry, a few times faster
        free = busy[0] if busy else 0.0
        for i in range(n):
            a = arr[i]
            w = free - a if free > a else 0.0
            out[i] = w
            free = a + w + svc[i]
        return np.array(out)
    free_at = [0.0] * (channels - len(busy)) + busy  # sorted, so a valid heap
    replace = heapq.heapreplace
    for i in range(n):
        a = arr[i]
        f = free_at[0]
        if f > a:
            out[i] = f - a
            replace(free_at, f + svc[i])
        else:
            replace(free_at, a + svc[i])
    return np.array(out)


def simulate(arrival_rate: float, service_samples_s, channels: int, *, scv_arrival: float = 1.0,
             n_jobs: int = 200_000, warmup: float = 0.1, seed: int = 0) -> SimResult:
    if not (arrival_rate > 0 and math.isfinite(arrival_rate)):
        raise ValueError(f"arrival_rate must be finite and > 0 per second, got {arrival_rate!r}")
    if not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
    if not (scv_arrival >= 0 and math.isfinite(scv_arrival)):
        raise ValueError(f"scv_arrival must be finite and >= 0, got {scv_arrival!r}")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must be a fraction in [0, 1), got {warmup!r}")
    skip = int(n_jobs * warmup)
    if n_jobs - skip < 1:
        raise ValueError(f"n_jobs={n_jobs!r} leaves no job after warmup={warmup}: need n_jobs >= 1 "
                         f"measured job")
    samples = np.asarray(service_samples_s, dtype=float).ravel()
    if (samples.size == 0 or not np.all(np.isfinite(samples)) or np.any(samples < 0)
            or samples.sum() <= 0):
        raise ValueError("service_samples_s must be a non-empty array of finite times >= 0 s "
                         "with a mean > 0 s")

    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(interarrivals(rng, arrival_rate, scv_arrival, n_jobs))
    service = rng.choice(samples, n_jobs)
    # start near steady state: round(lambda E[S]) channels busy, each with an equilibrium
    # residual time (a length-biased service time times a uniform). Starting empty, a fleet of
    # c channels needs ~5c arrivals to fill, more than the warm-up holds once c is in the
    # thousands; this way the warm-up only has to build the queue.
    n_busy = min(int(channels), int(round(arrival_rate * samples.mean())))
    residual = rng.choice(samples, n_busy, p=samples / samples.sum()) * rng.random(n_busy)
    waits = waits_fcfs(arrivals, service, int(channels), residual)

    # busy time inside the measured window [first measured arrival, last measured arrival],
    # counting every job's service interval clipped to it (warm-up jobs can still be running)
    t0, t1 = arrivals[skip], arrivals[-1]
    start = arrivals + waits
    end = start + service
    busy = float(np.sum(np.clip(end, t0, t1) - np.clip(start, t0, t1))
                 + np.sum(np.clip(residual, t0, t1) - t0))
    span = t1 - t0
    util = busy / (channels * span) if span > 0 else math.nan

    w = waits[skip:]
    r = w + service[skip:]
    wq = np.percentile(w, [50, 95, 99])
    rq = np.percentile(r, [50, 95, 99])
    return SimResult(
        channels=int(channels), arrival_rate=float(arrival_rate), n_jobs=int(w.size),
        utilisation=util, p_wait=float(np.mean(w > 0)),
        mean_wait_s=float(w.mean()), p50_wait_s=float(wq[0]), p95_wait_s=float(wq[1]),
        p99_wait_s=float(wq[2]),
        mean_response_s=float(r.mean()), p50_response_s=float(rq[0]), p95_response_s=float(rq[1]),
        p99_response_s=float(rq[2]),
    )
