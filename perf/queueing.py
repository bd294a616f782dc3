"""Analytic queueing model of a fleet: one central FIFO queue in front of c parallel channels.

A server held at concurrency k counts as k channels, so N servers give c = N*k. Waits follow
M/M/c (Erlang C) scaled by Allen–Cunneen for general arrivals and service:
    Wq ~ (ca2 + cs2) / 2 * Wq(M/M/c)
with the waiting-time tail P(Wq > t) ~ p_wait * exp(-theta t), theta = p_wait / E[Wq]
(exact for M/M/c, where theta = c*mu - lambda). Response T = Wq + S with S independent of Wq,
as in FCFS M/M/c. All times in seconds.
"""

import math
from dataclasses import dataclass

import numpy as np


def erlang_c(c: int, a: float) -> float:
    """P(an arrival waits) in M/M/c with offered load a = lambda * E[S] Erlangs."""
    if not isinstance(c, (int, np.integer)) or c < 1:
        raise ValueError(f"channels c must be an integer >= 1, got {c!r}")
    if not (a >= 0 and math.isfinite(a)):
        raise ValueError(f"offered load a must be finite and >= 0, got {a!r}")
    if a >= c:
        raise ValueError(f"utilisation a/c = {a / c:.4g} >= 1: the queue is unstable "
                         f"(need offered load a < channels c, got a={a:.6g}, c={c})")
    if a == 0:
        return 0.0
    # Erlang B recursion in reciprocal form, 1/B(n) = 1 + n/(a B(n-1)): no factorials or powers,
    # stays in [1, inf) and does not overflow for thousands of channels.
    inv_b = 1.0
    for n in range(1, int(c) + 1):
        inv_b = 1.0 + inv_b * n / a
    b = 1.0 / inv_b
    rho = a / c
    return b / (1.0 - rho * (1.0 - b))


def _wait_quantile(p_wait: float, theta: float, q: float) -> float:
    # P(Wq > t) = p_wait * exp(-theta t) = 1 - q  ->  t; zero when the atom at 0 already covers q
    if p_wait <= 1.0 - q:
        return 0.0
    if theta == 0:
        return math.inf
    return math.log(p_wait / (1.0 - q)) / theta


def _bisect_quantile(survival, q: float, hi: float) -> float:
    # smallest t with survival(t) <= 1 - q; survival is non-increasing, survival(hi) <= 1 - q
    lo = 0.0
    if survival(lo) <= 1.0 - q:
        return 0.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if survival(mid) <= 1.0 - q:
            hi = mid
        else:
            lo = mid
        # 1e-9 relative is far below the model's own error; keeps big sample sets quick
        if hi - lo <= 1e-9 * hi:
            break
    return hi


def response_quantile(service_s: np.ndarray, p_wait: float, theta: float, q: float) -> float:
    """q-quantile of T = Wq + S: P(T > t) = mean_i P(Wq > t - s_i), with P(Wq > x) = 1 for x < 0
    and p_wait * exp(-theta x) for x >= 0."""
    s = np.sort(np.asarray(service_s, dtype=float))
    n = s.size

    def survival(t: float) -> float:
        j = int(np.searchsorted(s, t, side="right"))  # s[:j] <= t: these may still be waiting
        tail = np.exp(-theta * (t - s[:j])).sum() if theta > 0 else float(j)
        return ((n - j) + p_wait * tail) / n

    # at t = max(s) + wait quantile every term is <= 1 - q
    hi = float(s.max()) + _wait_quantile(p_wait, theta, q) + 1e-12
    return _bisect_quantile(survival, q, hi)


@dataclass(frozen=True)
class QueueEstimate:
    channels: int
    arrival_rate: float
    mean_service_s: float
    scv_service: float
    scv_arrival: float
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

    @property
    def stable(self) -> bool:
        return self.utilisation < 1.0

    @property
    def relaxation_s(self) -> float:
        """How long the queue takes to forget how it started, as an order of magnitude: in heavy
        traffic the queue length is a reflected Brownian motion with drift c/E[S] - lambda and
        variance lambda (ca2 + cs2) per second, which settles on the scale variance / drift^2.
        It grows as 1/(1 - rho)^2: a simulation (or a real peak) shorter than this has not
        reached the steady state the p95 above describes."""
        drift = self.channels / self.mean_service_s - self.arrival_rate
        if drift <= 0:
            return math.inf
        return self.arrival_rate * (self.scv_arrival + self.scv_service) / drift**2


def _check_samples(service_samples_s) -> np.ndarray:
    s = np.asarray(service_samples_s, dtype=float).ravel()
    if s.size == 0:
        raise ValueError("service_samples_s is empty: need at least one service time")
    if not np.all(np.isfinite(s)) or np.any(s < 0) or s.mean() <= 0:
        raise ValueError("service_samples_s must be finite, >= 0 s, with a mean > 0 s")
    return s


def estimate(arrival_rate: float, service_samples_s, channels: int,
             scv_arrival: float = 1.0) -> QueueEstimate:
    """G/G/c estimate by Allen–Cunneen. At utilisation >= 1 the waits are math.inf (p_wait 1)
    rather than an error, so a sizing search can step over fleets that are too small."""
    if not (arrival_rate >= 0 and math.isfinite(arrival_rate)):
        raise ValueError(f"arrival_rate must be finite and >= 0 per second, got {arrival_rate!r}")
    if not isinstance(channels, (int, np.integer)) or channels < 1:
        raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
    if not (scv_arrival >= 0 and math.isfinite(scv_arrival)):
        raise ValueError(f"scv_arrival must be finite and >= 0, got {scv_arrival!r}")
    s = _check_samples(service_samples_s)
    c = int(channels)
    es = float(s.mean())
    cs2 = float(s.var() / es**2)
    a = arrival_rate * es
    rho = a / c
    common = dict(channels=c, arrival_rate=float(arrival_rate), mean_service_s=es,
                  scv_service=cs2, scv_arrival=float(scv_arrival), utilisation=rho)
    if rho >= 1.0:
        inf = math.inf
        return QueueEstimate(**common, p_wait=1.0, mean_wait_s=inf, p50_wait_s=inf,
                             p95_wait_s=inf, p99_wait_s=inf, mean_response_s=inf,
                             p50_response_s=inf, p95_response_s=inf, p99_response_s=inf)
    p_wait = erlang_c(c, a)
    mu = 1.0 / es
    wq = (scv_arrival + cs2) / 2.0 * p_wait / (c * mu - arrival_rate)
    if wq > 0:
        theta = p_wait / wq
    else:
        # deterministic arrivals and service (or no load): nobody waits
        p_wait, theta = 0.0, 0.0
    return QueueEstimate(
        **common, p_wait=p_wait, mean_wait_s=wq,
        p50_wait_s=_wait_quantile(p_wait, theta, 0.50),
        p95_wait_s=_wait_quantile(p_wait, theta, 0.95),
        p99_wait_s=_wait_quantile(p_wait, theta, 0.99),
        mean_response_s=wq + es,
        p50_response_s=response_quantile(s, p_wait, theta, 0.50),
        p95_response_s=response_quantile(s, p_wait, theta, 0.95),
        p99_response_s=response_quantile(s, p_wait, theta, 0.99),
    )


@dataclass(frozen=True)
class MMc:
    """Closed-form M/M/c, the reference the approximations are tested against."""
    arrival_rate: float
    service_rate: float
    channels: int
    utilisation: float
    p_wait: float
    mean_wait_s: float
    mean_response_s: float

    def wait_quantile(self, q: float) -> float:
        return _wait_quantile(self.p_wait, self.channels * self.service_rate - self.arrival_rate, q)

    def response_survival(self, t: float) -> float:
        # Wq is an atom at 0 (prob 1 - C) plus C * Exp(alpha), alpha = c mu - lambda; add Exp(mu)
        mu, alpha, pw = self.service_rate, self.channels * self.service_rate - self.arrival_rate, self.p_wait
        if abs(alpha - mu) <= 1e-9 * mu:
            conv = (1.0 + mu * t) * math.exp(-mu * t)
        else:
            conv = (alpha * math.exp(-mu * t) - mu * math.exp(-alpha * t)) / (alpha - mu)
        return (1.0 - pw) * math.exp(-mu * t) + pw * conv

    def response_quantile(self, q: float) -> float:
        if not 0 < q < 1:
            raise ValueError(f"quantile q must be in (0, 1), got {q!r}")
        if self.channels == 1:
            # M/M/1: T ~ Exp(mu - lambda)
            return -math.log(1.0 - q) / (self.service_rate - self.arrival_rate)
        hi = -math.log(1.0 - q) / min(self.service_rate, self.channels * self.service_rate
                                      - self.arrival_rate) * 4 + 1.0 / self.service_rate
        while self.response_survival(hi) > 1.0 - q:
            hi *= 2
        return _bisect_quantile(self.response_survival, q, hi)


def mmc(arrival_rate: float, service_rate: float, c: int) -> MMc:
    if not (arrival_rate >= 0 and service_rate > 0):
        raise ValueError(f"need arrival_rate >= 0 and service_rate > 0, got "
                         f"{arrival_rate!r}, {service_rate!r}")
    a = arrival_rate / service_rate
    p_wait = erlang_c(c, a)  # raises for utilisation >= 1
    wq = p_wait / (c * service_rate - arrival_rate)
    return MMc(arrival_rate=float(arrival_rate), service_rate=float(service_rate), channels=int(c),
               utilisation=a / c, p_wait=p_wait, mean_wait_s=wq,
               mean_response_s=wq + 1.0 / service_rate)
