"""Fleet sizing from a measured service curve (the JSON `t2vserve perf run` writes).

Each measured concurrency k turns a server into k channels whose service time is the latency
measured at k. For each k the fleet is the fewest servers N that satisfy both constraints:
  - utilisation lambda E[S] / (N k) at peak at most the target (default 0.8): near 1 the wait
    grows as 1/(1 - rho) and the time the queue takes to settle as 1/(1 - rho)^2, so a fleet
    planned at 100 % has no room for a forecast error, a slow node or a burst;
  - the analytic p95 response (queue wait plus service) within the SLO.
We keep the k that needs the fewest servers, then check that N by simulation. All times in
seconds.
"""

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np

from t2vserve.perf.queueing import estimate, response_quantile
from t2vserve.perf.simulation import simulate

SYNTHETIC_POINTS = 1000
DEFAULT_TARGET_UTILISATION = 0.8
# a simulation shorter than this many relaxation times of the queue is flagged as not settled
_SETTLED_RELAXATIONS = 10
# z-scores of the percentiles a perf run reports, to fit a lognormal when raw latencies are absent
_Z = {"p90": NormalDist().inv_cdf(0.90), "p95": NormalDist().inv_cdf(0.95),
      "p99": NormalDist().inv_cdf(0.99)}


@dataclass(eq=False)
class Level:
    concurrency: int
    throughput: float
    latencies_s: np.ndarray
    synthetic: bool = False
    scale: float = 1.0  # latencies were multiplied by this so k / E[S] = the measured X(k)

    @property
    def mean_service_s(self) -> float:
        return float(np.mean(self.latencies_s))

    @property
    def service_p95_s(self) -> float:
        # the same quantile rule as the queue model's, so "SLO below service p95" is consistent
        return response_quantile(self.latencies_s, 0.0, 0.0, 0.95)

    @property
    def little_ratio(self) -> float:
        # X(k) * E[S] / k: 1 when the k-channel model matches the measurement (Little's law);
        # well below 1 means the server was idle between requests (client-side gaps)
        return self.throughput * self.mean_service_s / self.concurrency


def _lognormal_from_percentiles(lat_ms: dict, where: str) -> np.ndarray:
    p50 = lat_ms.get("p50", lat_ms.get("avg"))
    if p50 is None or not p50 > 0:
        raise ValueError(f"{where}: no latencies_ms and latency_ms has no p50 or avg > 0")
    sigma = 0.0
    for key in ("p95", "p90", "p99"):
        v = lat_ms.get(key)
        if v is not None and v > p50:
            sigma = math.log(v / p50) / _Z[key]
            break
    # fixed quantile grid rather than random draws: the same result gives the same samples
    nd = NormalDist()
    z = np.array([nd.inv_cdf((i + 0.5) / SYNTHETIC_POINTS) for i in range(SYNTHETIC_POINTS)])
    return p50 / 1000.0 * np.exp(sigma * z)


@dataclass(eq=False)
class ServiceCurve:
    levels: list[Level]
    host: str = ""
    profile: str = ""
    device: str = ""

    @classmethod
    def from_result(cls, result: dict) -> "ServiceCurve":
        raw = result.get("levels") or []
        levels = []
        for i, lv in enumerate(raw):
            k = lv.get("concurrency")
            if k is None and lv.get("request_rate") is not None:
                # an open-loop (request-rate) level measures a queue, not a k-channel server
                continue
            x = lv.get("throughput")
            if not isinstance(k, int) or k < 1:
                raise ValueError(f"levels[{i}]: concurrency must be an integer >= 1, got {k!r}")
            if x is None or not x > 0:
                raise ValueError(f"levels[{i}] (k={k}): throughput must be > 0 videos/s, got {x!r}")
            lat = lv.get("latencies_ms") or []
            if len(lat):
                s = np.asarray(lat, dtype=float) / 1000.0
                if not np.all(np.isfinite(s)) or np.any(s <= 0):
                    raise ValueError(f"levels[{i}] (k={k}): latencies_ms must be finite and > 0")
                levels.append(Level(k, float(x), s))
            else:
                s = _lognormal_from_percentiles(lv.get("latency_ms") or {}, f"levels[{i}] (k={k})")
                levels.append(Level(k, float(x), s, synthetic=True))
        for lv in levels:
            # Never credit a server with more capacity than was measured: where k / E[S]
            # exceeds X(k) (Little's ratio < 1: slots idle between requests, window edges),
            # stretch the service times so the channels deliver exactly X(k).
            if lv.little_ratio < 1.0:
                lv.scale = 1.0 / lv.little_ratio
                lv.latencies_s = lv.latencies_s * lv.scale
        if not levels:
            raise ValueError("perf result has no concurrency levels: need at least one measured "
                             "concurrency >= 1 (request-rate levels are not used for sizing)")
        ks = [lv.concurrency for lv in levels]
        if len(set(ks)) != len(ks):
            raise ValueError(f"perf result repeats a concurrency level: {ks}")
        levels.sort(key=lambda lv: lv.concurrency)
        return cls(levels, result.get("host", ""), result.get("profile", ""),
                   result.get("device", ""))

    @classmethod
    def deterministic(cls, seconds_per_video: float) -> "ServiceCurve":
        """One video at a time per GPU, every video the same cost: a roofline estimate's
        service curve."""
        ms = seconds_per_video * 1000
        return cls.from_result({"levels": [{
            "concurrency": 1, "throughput": 1.0 / seconds_per_video,
            "latency_ms": {q: ms for q in ("avg", "p50", "p90", "p95", "p99")},
            "latencies_ms": [ms]}]})

    def level(self, concurrency: int) -> Level:
        for lv in self.levels:
            if lv.concurrency == concurrency:
                return lv
        raise ValueError(f"concurrency {concurrency} was not measured; measured: "
                         f"{[lv.concurrency for lv in self.levels]}")


@dataclass(frozen=True)
class Demand:
    peak_per_hour: float
    scv_arrival: float = 1.0

    def __post_init__(self):
        if not (self.peak_per_hour > 0 and math.isfinite(self.peak_per_hour)):
            raise ValueError(f"peak_per_hour must be finite and > 0, got {self.peak_per_hour!r}")
        if not (self.scv_arrival >= 0 and math.isfinite(self.scv_arrival)):
            raise ValueError(f"scv_arrival must be finite and >= 0 (1.0 = Poisson), "
                             f"got {self.scv_arrival!r}")

    @property
    def arrival_rate(self) -> float:
        return self.peak_per_hour / 3600.0


@dataclass(frozen=True)
class Slo:
    p95_s: float

    def __post_init__(self):
        if not (self.p95_s > 0 and math.isfinite(self.p95_s)):
            raise ValueError(f"SLO p95_s must be finite and > 0 s, got {self.p95_s!r}")


@dataclass
class LevelSizing:
    concurrency: int
    throughput: float
    mean_service_s: float
    service_p95_s: float
    little_ratio: float
    synthetic: bool
    scale: float  # service times stretched by this to match the measured throughput
    servers_for_utilisation: int  # fewest with utilisation <= the target
    servers_for_slo: int | None  # fewest meeting the p95 SLO (analytic); None: none can
    servers: int | None  # the larger of the two; None: no fleet up to max_servers does both
    binding: str | None  # "utilisation", "p95 SLO" or "both": which constraint set `servers`
    utilisation: float | None
    p50_s: float | None
    p95_s: float | None


@dataclass
class SimCheck:
    servers: int
    utilisation: float
    p95_s: float  # analytic
    sim_p50_s: float
    sim_p95_s: float
    sim_p50_wait_s: float
    sim_p95_wait_s: float
    sim_utilisation: float
    sim_p_wait: float = math.nan
    sim_mean_wait_s: float = math.nan


@dataclass
class Sizing:
    concurrency: int
    servers: int
    channels: int
    arrival_rate: float
    peak_per_hour: float
    scv_arrival: float
    slo_p95_s: float
    synthetic: bool
    target_utilisation: float
    servers_for_utilisation: int
    servers_for_slo: int
    binding: str  # "utilisation", "p95 SLO" or "both"
    utilisation: float  # achieved at peak with `servers`
    p_wait: float
    mean_wait_s: float
    p50_s: float
    p95_s: float
    p50_wait_s: float
    p95_wait_s: float
    sim_p_wait: float | None = None
    sim_mean_wait_s: float | None = None
    sim_p50_s: float | None = None
    sim_p95_s: float | None = None
    sim_p50_wait_s: float | None = None
    sim_p95_wait_s: float | None = None
    sim_hours: float | None = None  # arrivals simulated, in hours at the peak rate
    relaxation_hours: float | None = None  # the queue's settling time at `servers`
    servers_by_simulation: int | None = None  # the same two constraints, simulated p95
    disagreement: str = ""
    checks: list[SimCheck] = field(default_factory=list)  # every N simulated, ascending
    price_per_gpu_hour: float | None = None
    cost_per_hour: float | None = None
    cost_per_1000_videos: float | None = None
    per_level: list[LevelSizing] = field(default_factory=list)

    def to_dict(self) -> dict:
        # inf (an unstable N-1) is not valid JSON; None there, utilisation >= 1 says why
        def clean(v):
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            if isinstance(v, (float, np.floating)):
                return float(v) if math.isfinite(v) else None
            if isinstance(v, np.integer):
                return int(v)
            return v
        return clean(asdict(self))


def _smallest_ok(ok, start: int, lo_bound: int, hi_bound: int) -> int | None:
    """Smallest n in [lo_bound, hi_bound] with ok(n), for ok monotone (False... then True...),
    galloping from start and bisecting; None when ok(hi_bound) is False."""
    start = min(max(start, lo_bound), hi_bound)
    if ok(start):
        hi, step = start, 1
        lo = lo_bound - 1  # known-bad sentinel
        while hi - step >= lo_bound:
            if ok(hi - step):
                hi -= step
                step *= 2
            else:
                lo = hi - step
                break
    else:
        lo, step = start, 1
        while True:
            cand = min(lo + step, hi_bound)
            if ok(cand):
                hi = cand
                break
            if cand == hi_bound:
                return None
            lo, step = cand, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def check_target_utilisation(target) -> float:
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(f"target utilisation must be a fraction in (0, 1] (0.8 = 80 % busy at "
                         f"peak), got {target!r}")
    return float(target)


def servers_for_utilisation(arrival_rate: float, mean_s: float, k: int, target: float) -> int:
    """Fewest servers N with utilisation lambda E[S] / (N k) <= target and < 1 (at 1 the queue
    never drains, so target 1 means "stable"). The same float expression as queueing.estimate's,
    so the two never disagree at the boundary."""
    def ok(n):
        rho = arrival_rate * mean_s / (n * k)
        return rho <= target and rho < 1.0

    n = max(1, math.ceil(arrival_rate * mean_s / (k * target)))
    while not ok(n):
        n += 1
    while n > 1 and ok(n - 1):
        n -= 1
    return n


def _size_level(lv: Level, demand: Demand, slo: Slo, target: float, max_servers: int):
    """(servers for the utilisation target, servers for the SLO or None, servers or None)."""
    lam, k = demand.arrival_rate, lv.concurrency
    n_util = servers_for_utilisation(lam, lv.mean_service_s, k, target)
    if lv.service_p95_s > slo.p95_s:
        return n_util, None, None  # waiting only adds to the service time: no N can help

    def meets_slo(n):
        e = estimate(lam, lv.latencies_s, n * k, demand.scv_arrival)
        return e.utilisation < 1.0 and e.p95_response_s <= slo.p95_s

    n_stable = servers_for_utilisation(lam, lv.mean_service_s, k, 1.0)
    n_slo = (_smallest_ok(meets_slo, n_stable, n_stable, max_servers)
             if n_stable <= max_servers else None)
    if n_slo is None or n_util > max_servers:
        return n_util, n_slo, None
    return n_util, n_slo, max(n_util, n_slo)


def _binding(n_util: int, n_slo: int) -> str:
    return "both" if n_util == n_slo else "utilisation" if n_util > n_slo else "p95 SLO"


def size_fleet(curve: ServiceCurve, demand: Demand, slo: Slo, *,
               target_utilisation: float = DEFAULT_TARGET_UTILISATION,
               price_per_gpu_hour: float | None = None, max_servers: int = 100_000,
               simulate_check: bool = True, seed: int = 0, sim_jobs: int = 200_000) -> Sizing:
    target = check_target_utilisation(target_utilisation)
    if not isinstance(max_servers, int) or max_servers < 1:
        raise ValueError(f"max_servers must be an integer >= 1, got {max_servers!r}")
    if price_per_gpu_hour is not None and not price_per_gpu_hour >= 0:
        raise ValueError(f"price_per_gpu_hour must be >= 0, got {price_per_gpu_hour!r}")
    lam = demand.arrival_rate
    per_level, best = [], None
    for lv in curve.levels:
        n_util, n_slo, n = _size_level(lv, demand, slo, target, max_servers)
        est = (estimate(lam, lv.latencies_s, n * lv.concurrency, demand.scv_arrival)
               if n is not None else None)
        per_level.append(LevelSizing(
            concurrency=lv.concurrency, throughput=lv.throughput,
            mean_service_s=lv.mean_service_s, service_p95_s=lv.service_p95_s,
            little_ratio=lv.little_ratio, synthetic=lv.synthetic, scale=lv.scale,
            servers_for_utilisation=n_util, servers_for_slo=n_slo, servers=n,
            binding=_binding(n_util, n_slo) if n is not None else None,
            utilisation=est.utilisation if est else None,
            p50_s=est.p50_response_s if est else None, p95_s=est.p95_response_s if est else None))
        if n is not None and (best is None or (n, est.p95_response_s) < (best[1], best[2].p95_response_s)):
            best = (lv, n, est, per_level[-1])

    if best is None:
        times = ", ".join(f"k={lv.concurrency}: {lv.service_p95_s:.3f} s" for lv in curve.levels)
        if all(lv.service_p95_s > slo.p95_s for lv in curve.levels):
            raise ValueError(f"SLO p95 {slo.p95_s:.3f} s is below the service time p95 (no queueing) at "
                             f"every concurrency level ({times}): no fleet size can meet it")
        raise ValueError(f"no fleet of at most {max_servers} servers meets SLO p95 "
                         f"{slo.p95_s:.3f} s at utilisation <= {target:g} at "
                         f"{demand.peak_per_hour:g} videos/h (service time p95: {times})")

    lv, n, est, row = best
    k = lv.concurrency
    out = Sizing(
        concurrency=k, servers=n, channels=n * k, arrival_rate=lam,
        peak_per_hour=demand.peak_per_hour, scv_arrival=demand.scv_arrival,
        slo_p95_s=slo.p95_s, synthetic=lv.synthetic, target_utilisation=target,
        servers_for_utilisation=row.servers_for_utilisation, servers_for_slo=row.servers_for_slo,
        binding=row.binding, utilisation=est.utilisation,
        p_wait=est.p_wait, mean_wait_s=est.mean_wait_s, p50_s=est.p50_response_s,
        p95_s=est.p95_response_s,
        p50_wait_s=est.p50_wait_s, p95_wait_s=est.p95_wait_s, per_level=per_level,
        price_per_gpu_hour=price_per_gpu_hour)
    if price_per_gpu_hour is not None:
        out.cost_per_hour = price_per_gpu_hour * n
        # the fleet runs at its peak rate: this is the cost per video while demand is at peak
        out.cost_per_1000_videos = out.cost_per_hour / demand.peak_per_hour * 1000.0
    if simulate_check:
        _simulate_check(out, lv, demand, slo, max_servers, seed, sim_jobs)
    return out


def _simulate_check(out: Sizing, lv: Level, demand: Demand, slo: Slo, max_servers: int,
                    seed: int, sim_jobs: int) -> None:
    lam, k, n = demand.arrival_rate, lv.concurrency, out.servers
    checks: dict[int, SimCheck] = {}

    def check(m: int) -> SimCheck:
        if m not in checks:
            e = estimate(lam, lv.latencies_s, m * k, demand.scv_arrival)
            if e.utilisation >= 1.0:
                # a finite run of an unstable queue only measures its own length: report inf
                inf = math.inf
                checks[m] = SimCheck(m, e.utilisation, inf, inf, inf, inf, inf,
                                     sim_utilisation=e.utilisation,  # offered load, >= 1
                                     sim_p_wait=1.0, sim_mean_wait_s=inf)
            else:
                # the same seed for every N (common random numbers): more channels then never
                # lengthen any wait, so the simulated p95 is monotone in N and the search is sound
                r = simulate(lam, lv.latencies_s, m * k, scv_arrival=demand.scv_arrival,
                             n_jobs=sim_jobs, seed=seed)
                checks[m] = SimCheck(m, e.utilisation, e.p95_response_s, r.p50_response_s,
                                     r.p95_response_s, r.p50_wait_s, r.p95_wait_s, r.utilisation,
                                     r.p_wait, r.mean_wait_s)
        return checks[m]

    at_n = check(n)
    if n > 1:
        check(n - 1)
    out.sim_p50_s, out.sim_p95_s = at_n.sim_p50_s, at_n.sim_p95_s
    out.sim_p50_wait_s, out.sim_p95_wait_s = at_n.sim_p50_wait_s, at_n.sim_p95_wait_s
    out.sim_p_wait, out.sim_mean_wait_s = at_n.sim_p_wait, at_n.sim_mean_wait_s
    # the same rule as the analytic count with the simulated p95: the utilisation floor holds
    out.servers_by_simulation = _smallest_ok(lambda m: check(m).sim_p95_s <= slo.p95_s,
                                             n, out.servers_for_utilisation, max_servers)
    out.checks = [checks[m] for m in sorted(checks)]
    relax_s = estimate(lam, lv.latencies_s, n * k, demand.scv_arrival).relaxation_s
    out.sim_hours = sim_jobs / lam / 3600.0
    out.relaxation_hours = relax_s / 3600.0

    notes = []
    n_sim = out.servers_by_simulation
    if n_sim is None:
        notes.append(f"the simulation meets p95 <= {slo.p95_s:.3f} s with no fleet up to "
                     f"{max_servers} servers at k={k}, the analytic model with {n}")
    elif n_sim != n:
        notes.append(f"the simulation needs {n_sim} servers where the analytic model needs {n} "
                     f"(k={k}, {n_sim - n:+d})")
    rel = at_n.sim_p95_s / out.p95_s - 1.0
    if abs(rel) > 0.10:
        notes.append(f"at {n} servers the simulated p95 response is {at_n.sim_p95_s:.3f} s vs "
                     f"analytic {out.p95_s:.3f} s ({rel:+.0%})")
    if out.sim_hours < _SETTLED_RELAXATIONS * out.relaxation_hours:
        # near utilisation 1 a finite run starts with a short queue and ends before the queue
        # has grown to its steady-state length: the simulated waits come out short and noisy
        notes.append(f"at utilisation {out.utilisation:.4f} the queue takes "
                     f"~{out.relaxation_hours:.3g} h to settle and the simulation covers "
                     f"{out.sim_hours:.3g} h of arrivals, so the simulated p95 is not yet the "
                     f"steady-state figure the analytic model gives")
    out.disagreement = "; ".join(notes)
