"""Fleet estimates that follow the sampling mode: the DiT forwards one video spends in each
mode (counted, measured by a run, or assumed and named as such), and the roofline fleet for
base, cached and distilled side by side.

A measured result (`--from-result`) is read for DiT forwards per video, from either
  - a sampling table (`t2vserve.perf.sampling_table`'s `sampling-<date>-<host>.json`):
    `rows` (or `modes`), a list of entries (or a mapping name -> entry), each with
    `dit_forwards_mean` (or `dit_forwards`: mean forwards per video, batch rows: a CFG step
    is 2) and `steps`, named by `row` (or `name`, `label`, the mapping key), its kind by
    `mode`: `base`, `cached`/`cache`, `interval`/`guidance_interval`, `distilled`/`few_step`;
    a `base` entry with a non-empty `cache` (or `cache_threshold`) counts as cached, one with
    a `guidance_interval` as interval. Where `targets` has a met target whose `by` names a
    cached entry, that entry is the default cache setting; or
  - one t2v response's `info`: `sampling.dit_forwards`, `sampling.mode`,
    `sampling.cached_steps` (non-empty: cached) and `request.steps`.
A cached entry gives the saving: the forwards of the base entry at the same steps (else
2 x steps, the base with CFG) over its own. A distilled entry gives the forwards per step.
Interval entries are read but not used: `--cfg-interval` sets the interval.
"""

import math
import numbers
from dataclasses import dataclass

from t2vserve.perf.roofline import LABEL, DitSchedule, Estimate, estimate_video, format_estimate
from t2vserve.perf.sizing_report import _pct
from t2vserve.perf.sizing import (Demand, ServiceCurve, Sizing, Slo,
                                  check_target_utilisation, servers_for_utilisation, size_fleet)

MODES = ("base", "cached", "distilled")
# Issue 21: MagCache about 2x on Wan2.2-TI2V-5B at 720P. Used only where nothing was measured.
ASSUMED_CACHE_SAVING = 2.0
# Wan2.2-Lightning's LoRAs and the distilled tiny student sample 4 steps; FastWan2.2's DMD, 3.
DEFAULT_DISTILLED_STEPS = 4
_KINDS = {"base": "base", "cached": "cached", "cache": "cached", "interval": "interval",
          "guidance_interval": "interval", "distilled": "distilled", "few_step": "distilled"}


@dataclass(frozen=True)
class MeasuredMode:
    name: str
    kind: str  # base, cached, interval or distilled
    steps: int
    dit_forwards: float
    met_target: bool = False  # the table's target names it (the quality bar it cleared)


def _entry(name: str, e, where: str, met: set = frozenset()) -> MeasuredMode:
    if not isinstance(e, dict):
        raise ValueError(f"{where}: entry {name!r} must be an object, got {type(e).__name__}")
    f, steps, mode = e.get("dit_forwards", e.get("dit_forwards_mean")), e.get("steps"), \
        e.get("mode", "base")
    if isinstance(f, bool) or not isinstance(f, numbers.Real) or not math.isfinite(f) or f <= 0:
        raise ValueError(f"{where}: entry {name!r} needs dit_forwards (or dit_forwards_mean) "
                         f"> 0, got {f!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{where}: entry {name!r} needs steps, a positive int, got {steps!r}")
    if mode not in _KINDS:
        raise ValueError(f"{where}: entry {name!r} has mode {mode!r}; known: {', '.join(_KINDS)}")
    kind = _KINDS[mode]
    if kind == "base" and (e.get("cache") or e.get("cache_threshold")):
        kind = "cached"
    elif kind == "base" and e.get("guidance_interval"):
        kind = "interval"
    return MeasuredMode(name, kind, steps, float(f), name in met)


def read_measured(doc: dict, where: str) -> list[MeasuredMode]:
    """The DiT forwards per video a result measured (the keys are in the module docstring)."""
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a JSON object")
    table = doc.get("rows", doc.get("modes"))
    met = {t.get("by") for t in doc.get("targets") or () if isinstance(t, dict) and t.get("met")}
    if isinstance(table, dict):
        return [_entry(str(k), v, where, met) for k, v in table.items()]
    if isinstance(table, list) and table:
        return [_entry(str(e.get("row") or e.get("name") or e.get("label") or f"entry {i}")
                       if isinstance(e, dict) else f"entry {i}", e, where, met)
                for i, e in enumerate(table)]
    sampling, request = doc.get("sampling"), doc.get("request")
    if isinstance(sampling, dict) and "dit_forwards" in sampling and isinstance(request, dict):
        mode = "cached" if sampling.get("cached_steps") else sampling.get("mode", "base")
        return [_entry(f"{doc.get('variant', mode)} request", {
            "dit_forwards": sampling["dit_forwards"], "steps": request.get("steps"),
            "mode": mode}, where)]
    what = (" (a `perf run` result records no DiT forwards per video)"
            if doc.get("kind") == "t2vserve.perf.run" else "")
    raise ValueError(f"{where} has no DiT forwards per video{what}: give a sampling table "
                     f"(`rows` or `modes`, each entry with dit_forwards_mean or dit_forwards, "
                     f"and steps) or a t2v response's info (sampling.dit_forwards, "
                     f"request.steps)")


def _cache_measurement(measured: list[MeasuredMode], setting: str | None, where: str):
    cached = [m for m in measured if m.kind == "cached"]
    if setting is not None:
        chosen = [m for m in cached if m.name == setting]
        if not chosen:
            raise ValueError(f"--cache-setting {setting!r} is not a cached entry of {where}; "
                             f"cached entries: {', '.join(m.name for m in cached) or 'none'}")
        return chosen[0]
    if len(cached) > 1 and sum(m.met_target for m in cached) == 1:
        return next(m for m in cached if m.met_target)
    if len(cached) > 1:
        raise ValueError(f"{where} has {len(cached)} cached entries; pick one with "
                         f"--cache-setting: {', '.join(m.name for m in cached)}")
    return cached[0] if cached else None


def schedules(modes=MODES, *, steps: int = 50, cfg: bool = True,
              cfg_interval: float | None = None, cache_saving: float | None = None,
              distilled_steps: int | None = None, measured: list[MeasuredMode] = (),
              measured_from: str = "", cache_setting: str | None = None) -> list[DitSchedule]:
    """One DitSchedule per mode. The cached mode's saving: `cache_saving` if given, else the
    measured cached entry's, else ASSUMED_CACHE_SAVING, and its basis says which."""
    out = []
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "base":
            out.append(DitSchedule.base(steps, cfg, cfg_interval))
        elif mode == "cached":
            m = _cache_measurement(list(measured), cache_setting, measured_from)
            if cache_saving is not None:
                if m is not None:
                    raise ValueError(f"--cache-saving {cache_saving:g} and a measured cached "
                                     f"entry ({m.name!r} in {measured_from}): give one")
                saving, basis = cache_saving, "cache saving given"
            elif m is not None:
                ref = next((b.dit_forwards for b in measured
                            if b.kind == "base" and b.steps == m.steps), 2.0 * m.steps)
                saving = ref / m.dit_forwards
                basis = (f"measured: {m.name} spent {m.dit_forwards:g} forwards where the base "
                         f"at {m.steps} steps spends {ref:g}, {measured_from}"
                         + (", the setting that met its quality target" if m.met_target else ""))
            else:
                saving = ASSUMED_CACHE_SAVING
                basis = (f"assumed {ASSUMED_CACHE_SAVING:g}x fewer forwards, MagCache's figure "
                         f"on Wan2.2-TI2V-5B at 720P; measure it with --from-result")
            out.append(DitSchedule.cached(steps, saving, cfg, cfg_interval, basis))
        else:
            n = DEFAULT_DISTILLED_STEPS if distilled_steps is None else distilled_steps
            m = next((d for d in measured if d.kind == "distilled"), None)
            if m is None:
                out.append(DitSchedule.distilled(
                    n, "3 is FastWan2.2's DMD figure, 4 Wan2.2-Lightning's"))
            else:
                per_step = m.dit_forwards / m.steps
                d = DitSchedule.distilled(n)
                out.append(DitSchedule(
                    "distilled", d.steps, per_step * d.steps, 1,
                    f"{d.steps} steps x {per_step:g} (measured: {m.name} spent "
                    f"{m.dit_forwards:g} forwards in {m.steps} steps, {measured_from})"))
    return out


@dataclass
class ModeFleet:
    estimate: Estimate
    servers_for_utilisation: int  # the utilisation target alone
    sizing: Sizing | None  # both constraints; None where no fleet meets the p95 SLO
    unreachable: str = ""  # why there is no sizing

    @property
    def servers(self) -> int:
        return self.sizing.servers if self.sizing else self.servers_for_utilisation

    def to_dict(self) -> dict:
        return {"mode": self.estimate.mode, "estimate": self.estimate.to_dict(),
                "servers_for_utilisation": self.servers_for_utilisation,
                "sizing": self.sizing.to_dict() if self.sizing else None,
                "unreachable": self.unreachable}


def size_modes(scheds: list[DitSchedule], gpu, width: int, height: int, frames: int,
               demand: Demand, slo: Slo, *, utilisation: float = 0.40,
               preset: str = "wan2.2-ti2v-5b", target_utilisation: float = 0.8,
               price_per_gpu_hour: float | None = None) -> list[ModeFleet]:
    """The roofline fleet per schedule, analytic only (a single-mode run adds the simulation)."""
    target = check_target_utilisation(target_utilisation)
    out = []
    for sched in scheds:
        est = estimate_video(gpu, width, height, frames, schedule=sched,
                             utilisation=utilisation, preset=preset)
        n_util = servers_for_utilisation(demand.arrival_rate, est.seconds_per_video, 1, target)
        try:
            sizing = size_fleet(ServiceCurve.deterministic(est.seconds_per_video), demand, slo,
                                target_utilisation=target,
                                price_per_gpu_hour=price_per_gpu_hour, simulate_check=False)
            out.append(ModeFleet(est, n_util, sizing))
        except ValueError as exc:
            out.append(ModeFleet(est, n_util, None, str(exc)))
    return out


def markdown(fleets: list[ModeFleet], demand: Demand, slo: Slo, target: float,
             price_per_gpu_hour: float | None) -> str:
    e0 = fleets[0].estimate
    lines = [
        f"# Fleet by sampling mode: {demand.peak_per_hour:g} videos/hour, p95 ≤ {slo.p95_s:g} s, "
        f"utilisation ≤ {_pct(target)}",
        "",
        f"{e0.preset} {e0.width}x{e0.height}x{e0.frames} on {e0.gpu} at {e0.utilisation:.0%} "
        f"of peak FLOP/s, arrivals SCV {demand.scv_arrival:g} - {LABEL}.",
        "",
        "| mode | steps | DiT forwards per video | s per video | VAE share | GPUs | "
        "utilisation at peak | p95 SLO | GPU-hours per 1000 videos"
        + (" | $ per 1000 videos |" if price_per_gpu_hour is not None else " |"),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---:"
        + (" | ---: |" if price_per_gpu_hour is not None else " |"),
    ]
    for f in fleets:
        e, n = f.estimate, f.servers
        if f.sizing is None:
            slo_cell = (f"unreachable: {e.seconds_per_video:.1f} s per video > {slo.p95_s:g} s "
                        f"(GPUs for the utilisation target alone)")
        elif f.sizing.binding == "utilisation":
            slo_cell = f"met, p95 {f.sizing.p95_s:.1f} s"
        else:
            slo_cell = (f"binds ({f.servers_for_utilisation} for the utilisation target), "
                        f"p95 {f.sizing.p95_s:.1f} s")
        rho = demand.arrival_rate * e.seconds_per_video / n
        gpu_hours = n / demand.peak_per_hour * 1000.0
        row = (f"| {e.mode} | {e.steps} | {e.dit_forwards:.4g} | {e.seconds_per_video:.2f} | "
               f"{_pct(e.vae_share)} | {n} | {_pct(rho)} | {slo_cell} | {gpu_hours:.2f} |")
        if price_per_gpu_hour is not None:
            row += f" {gpu_hours * price_per_gpu_hour:,.2f} |"
        lines.append(row)
    lines += ["", "Where each mode's DiT forwards come from:", ""]
    lines += [f"- {f.estimate.mode}: {f.estimate.forwards_basis}" for f in fleets]
    lines += ["", "GPUs: the fewest meeting both the utilisation target and the p95 SLO (M/G/c, "
                  "one video at a time per GPU, every video the roofline's time); run "
                  "`t2vserve size --mode <mode>` for one mode's report with the simulation "
                  "check and plots.", ""]
    for f in fleets:
        lines += [format_estimate(f.estimate), ""]
    return "\n".join(lines)


def summary(fleets: list[ModeFleet]) -> str:
    def one(f: ModeFleet) -> str:
        e = f.estimate
        return (f"{e.mode}: {f.servers} GPU{'s' if f.servers != 1 else ''} "
                f"({e.dit_forwards:.4g} forwards, {e.seconds_per_video:.1f} s per video, VAE "
                f"{_pct(e.vae_share)}" + (", p95 SLO unreachable" if f.sizing is None else "")
                + ")")
    return "; ".join(one(f) for f in fleets)


def write(fleets: list[ModeFleet], md: str, options: dict, out) -> None:
    """out: the .md path; .html and .json (with the options it was made with) next to it."""
    import json

    from t2vserve.perf.sizing_report import to_html
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    out.with_suffix(".html").write_text(to_html(md, out.stem))
    out.with_suffix(".json").write_text(json.dumps(
        {"source": f"{LABEL}, per sampling mode", "options": options,
         "modes": [f.to_dict() for f in fleets]}, indent=1) + "\n")
