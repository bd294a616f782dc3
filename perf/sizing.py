"""Fleet sizing from a measured service curve (the JSON `t2vserve perf run` writes).

Each measured concurrency k turns a server into k channels whose service time is the latency
measured at k. For each k we find the fewest servers N whose analytic p95 response (queue wait
plus service) meets the SLO, keep the k that needs the fewest servers, then check that N by
simulation. All times in seconds.
"""

import math
from dataclasses import asdict, dataclass, field
from statistics import NormalDist

import numpy as np

from t2vserve.perf.queueing import estimate, response_quantile
from t2vserve.perf.simulation import simulate

SYNTHETIC_POINTS = 1000
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
    servers: int | None  # None: no fleet up to max_servers meets the SLO at this k
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
    utilisation: float
    p_wait: float
    p50_s: float
    p95_s: float
    p50_wait_s: float
    p95_wait_s: float
    sim_p50_s: float | None = None
    sim_p95_s: float | None = None
    sim_p50_wait_s: float | None = None
    sim_p95_wait_s: float | None = None
    servers_by_simulation: int | None = None
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


def _stable_min(arrival_rate: float, mean_s: float, k: int) -> int:
    # fewest servers with utilisation lambda E[S] / (N k) strictly below 1
    return int(math.floor(arrival_rate * mean_s / k)) + 1


def _size_level(lv: Level, demand: Demand, slo: Slo, max_servers: int):
    lam, k = demand.arrival_rate, lv.concurrency
    if lv.service_p95_s > slo.p95_s:
        return None, None  # waiting only adds to the service time: no N can help

    def ok(n):
        e = estimate(lam, lv.latencies_s, n * k, demand.scv_arrival)
        return e.utilisation < 1.0 and e.p95_response_s <= slo.p95_s

    n0 = _stable_min(lam, lv.mean_service_s, k)
    if n0 > max_servers:
        return None, None
    n = _smallest_ok(ok, n0, n0, max_servers)
    if n is None:
        return None, None
    return n, estimate(lam, lv.latencies_s, n * k, demand.scv_arrival)


def size_fleet(curve: ServiceCurve, demand: Demand, slo: Slo, *,
               price_per_gpu_hour: float | None = None, max_servers: int = 100_000,
               simulate_check: bool = True, seed: int = 0, sim_jobs: int = 200_000) -> Sizing:
    if not isinstance(max_servers, int) or max_servers < 1:
        raise ValueError(f"max_servers must be an integer >= 1, got {max_servers!r}")
    if price_per_gpu_hour is not None and not price_per_gpu_hour >= 0:
        raise ValueError(f"price_per_gpu_hour must be >= 0, got {price_per_gpu_hour!r}")
    lam = demand.arrival_rate
    per_level, best = [], None
    for lv in curve.levels:
        n, est = _size_level(lv, demand, slo, max_servers)
        per_level.append(LevelSizing(
            concurrency=lv.concurrency, throughput=lv.throughput,
            mean_service_s=lv.mean_service_s, service_p95_s=lv.service_p95_s,
            little_ratio=lv.little_ratio, synthetic=lv.synthetic, scale=lv.scale, servers=n,
            utilisation=est.utilisation if est else None,
            p50_s=est.p50_response_s if est else None, p95_s=est.p95_response_s if est else None))
        if n is not None and (best is None or (n, est.p95_response_s) < (best[1], best[2].p95_response_s)):
            best = (lv, n, est)

    if best is None:
        times = ", ".join(f"k={lv.concurrency}: {lv.service_p95_s:.3f} s" for lv in curve.levels)
        if all(lv.service_p95_s > slo.p95_s for lv in curve.levels):
            raise ValueError(f"SLO p95 {slo.p95_s:.3f} s is below the service time p95 (no queueing) at "
                             f"every concurrency level ({times}): no fleet size can meet it")
        raise ValueError(f"no fleet of at most {max_servers} servers meets SLO p95 "
                         f"{slo.p95_s:.3f} s at {demand.peak_per_hour:g} videos/h "
                         f"(service time p95: {times})")

    lv, n, est = best
    k = lv.concurrency
    out = Sizing(
        concurrency=k, servers=n, channels=n * k, arrival_rate=lam,
        peak_per_hour=demand.peak_per_hour, scv_arrival=demand.scv_arrival,
        slo_p95_s=slo.p95_s, synthetic=lv.synthetic, utilisation=est.utilisation,
        p_wait=est.p_wait, p50_s=est.p50_response_s, p95_s=est.p95_response_s,
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
    n_stable = _stable_min(lam, lv.mean_service_s, k)
    checks: dict[int, SimCheck] = {}

    def check(m: int) -> SimCheck:
        if m not in checks:
            e = estimate(lam, lv.latencies_s, m * k, demand.scv_arrival)
            if e.utilisation >= 1.0:
                # a finite run of an unstable queue only measures its own length: report inf
                inf = math.inf
                checks[m] = SimCheck(m, e.utilisation, inf, inf, inf, inf, inf,
                                     sim_utilisation=e.utilisation)  # offered load, >= 1
            else:
                # the same seed for every N (common random numbers): more channels then never
                # lengthen any wait, so the simulated p95 is monotone in N and the search is sound
                r = simulate(lam, lv.latencies_s, m * k, scv_arrival=demand.scv_arrival,
                             n_jobs=sim_jobs, seed=seed)
                checks[m] = SimCheck(m, e.utilisation, e.p95_response_s, r.p50_response_s,
                                     r.p95_response_s, r.p50_wait_s, r.p95_wait_s, r.utilisation)
        return checks[m]

    at_n = check(n)
    if n > 1:
        check(n - 1)
    out.sim_p50_s, out.sim_p95_s = at_n.sim_p50_s, at_n.sim_p95_s
    out.sim_p50_wait_s, out.sim_p95_wait_s = at_n.sim_p50_wait_s, at_n.sim_p95_wait_s
    out.servers_by_simulation = _smallest_ok(lambda m: check(m).sim_p95_s <= slo.p95_s,
                                             n, n_stable, max_servers)
    out.checks = [checks[m] for m in sorted(checks)]

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
    out.disagreement = "; ".join(notes)


def demand_sweep(curve: ServiceCurve, peaks_per_hour: list[float], scv_arrival: float, slo: Slo,
                 *, max_servers: int = 100_000) -> list[tuple[float, int]]:
    """(peak videos/h, servers) for a GPUs-needed-vs-demand plot, analytic only."""
    return [(float(p), size_fleet(curve, Demand(p, scv_arrival), slo, max_servers=max_servers,
                                  simulate_check=False).servers)
            for p in peaks_per_hour]


def latency_vs_load(curve: ServiceCurve, level, servers: int, loads, *, scv_arrival: float = 1.0,
                    sim_jobs: int = 20_000, seed: int = 0) -> list[tuple[float, float, float, float]]:
    """(arrival rate /s, utilisation, analytic p95 response, simulated p95 response) for a fixed
    fleet of `servers` at concurrency `level` (an int k or a Level). `loads` are target
    utilisations lambda E[S] / (N k); at >= 1 both p95s are inf."""
    lv = level if isinstance(level, Level) else curve.level(level)
    if not isinstance(servers, int) or servers < 1:
        raise ValueError(f"servers must be an integer >= 1, got {servers!r}")
    c = servers * lv.concurrency
    rows = []
    for rho in loads:
        if not rho > 0:
            raise ValueError(f"loads are utilisations and must be > 0, got {rho!r}")
        lam = rho * c / lv.mean_service_s
        e = estimate(lam, lv.latencies_s, c, scv_arrival)
        if e.utilisation >= 1.0:
            sim_p95 = math.inf
        else:
            sim_p95 = simulate(lam, lv.latencies_s, c, scv_arrival=scv_arrival, n_jobs=sim_jobs,
                               seed=seed).p95_response_s
        rows.append((lam, e.utilisation, e.p95_response_s, sim_p95))
    return rows
