"""The fleet-sizing report: Markdown and HTML with two plots (servers vs peak demand,
p95 latency vs load), from a `Sizing` and the service curve it came from."""

import html
import math
from pathlib import Path

import numpy as np

from t2vserve.perf.queueing import estimate
from t2vserve.perf.report import _plt
from t2vserve.perf.simulation import simulate
from t2vserve.perf.sizing import (DEFAULT_TARGET_UTILISATION, Demand, Level, ServiceCurve, Sizing,
                                  Slo, size_fleet)


def _s(v) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.2f}"


def _pct(v: float) -> str:
    # 0.8 -> "80 %", 0.79953 -> "79.95 %": two decimals, so an achieved 79.95 % never reads
    # as the target it sits just under
    return f"{v * 100:.2f}".rstrip("0").rstrip(".") + " %"


def _duration(seconds: float) -> str:
    return f"{seconds:.2g} s" if seconds < 3600 else f"{seconds / 3600:.3g} h"


def demand_sweep(curve: ServiceCurve, peaks_per_hour: list[float], scv_arrival: float, slo: Slo,
                 *, target_utilisation: float = DEFAULT_TARGET_UTILISATION,
                 max_servers: int = 100_000) -> list[tuple[float, int]]:
    """(peak videos/h, servers) for a GPUs-needed-vs-demand plot, analytic only."""
    return [(float(p), size_fleet(curve, Demand(p, scv_arrival), slo,
                                  target_utilisation=target_utilisation, max_servers=max_servers,
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


def plots(curve: ServiceCurve, sizing: Sizing, stem: Path) -> list[Path]:
    plt = _plt()
    slo = Slo(sizing.slo_p95_s)
    peaks = sorted({round(sizing.peak_per_hour * f) for f in np.linspace(0.1, 2.0, 20)} - {0})
    sweep = demand_sweep(curve, peaks, sizing.scv_arrival, slo,
                         target_utilisation=sizing.target_utilisation)
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    ax.step([p for p, _ in sweep], [n for _, n in sweep], where="post")
    ax.plot([sizing.peak_per_hour], [sizing.servers], "ro",
            label=f"{sizing.peak_per_hour:g}/h → {sizing.servers} servers")
    ax.set_xlabel("peak demand (videos/hour)")
    ax.set_ylabel("servers (GPUs) needed")
    ax.set_title(f"p95 ≤ {sizing.slo_p95_s:g} s, utilisation ≤ {_pct(sizing.target_utilisation)}, "
                 f"arrivals SCV {sizing.scv_arrival:g}, {sizing.concurrency} in flight per server",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    demand_png = stem.with_name(stem.name + "-demand.png")
    fig.savefig(demand_png)
    plt.close(fig)

    # up to 0.99: the climb near 1 is what the utilisation target keeps the fleet away from
    loads = [0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99]
    rows = latency_vs_load(curve, sizing.concurrency, sizing.servers, loads,
                           scv_arrival=sizing.scv_arrival)
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    ax.plot([r[1] for r in rows], [r[2] for r in rows], "o-", label="M/G/c (Allen–Cunneen)")
    ax.plot([r[1] for r in rows], [r[3] for r in rows], "s--", label="discrete-event simulation")
    ax.axhline(sizing.slo_p95_s, color="r", lw=1, label=f"SLO p95 {sizing.slo_p95_s:g} s")
    ax.axvline(sizing.target_utilisation, color="g", lw=1, ls="--",
               label=f"target {_pct(sizing.target_utilisation)}")
    ax.axvline(sizing.utilisation, color="k", lw=1, ls=":",
               label=f"at the sized peak, {_pct(sizing.utilisation)}")
    ax.set_xlabel("utilisation of the fleet")
    ax.set_ylabel("p95 latency (s)")
    ax.set_title(f"{sizing.servers} servers × {sizing.concurrency} in flight", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    load_png = stem.with_name(stem.name + "-load.png")
    fig.savefig(load_png)
    plt.close(fig)
    return [demand_png, load_png]


def markdown(sizing: Sizing, source: str, images: list[Path], estimate_md: str = "") -> str:
    s = sizing
    lines = [
        f"# Fleet sizing: {s.peak_per_hour:g} videos/hour, p95 ≤ {s.slo_p95_s:g} s, "
        f"utilisation ≤ {_pct(s.target_utilisation)}",
        "",
        f"Service curve: {source}" + (" (latencies synthesised from percentiles)" if s.synthetic else ""),
        "",
    ]
    if estimate_md:
        lines += [estimate_md, ""]
    lines += [
        f"**{s.servers} servers** (GPUs), each held at {s.concurrency} "
        f"request{'s' if s.concurrency != 1 else ''} in flight ({s.channels} channels): "
        f"utilisation {_pct(s.utilisation)} at peak against a target of "
        f"{_pct(s.target_utilisation)}. Binding constraint: **{s.binding}**.",
        "",
        "| constraint | servers needed |",
        "| --- | --- |",
        (f"| utilisation ≤ {_pct(s.target_utilisation)} at peak | {s.servers_for_utilisation} |"
         if s.target_utilisation < 1 else
         f"| utilisation < 100 % at peak (a queue that drains) | {s.servers_for_utilisation} |"),
        f"| p95 ≤ {s.slo_p95_s:g} s (M/G/c) | {s.servers_for_slo} |",
        f"| both (binding: {s.binding}) | {s.servers} |",
        "",
        f"At {s.servers} servers:",
        "",
        "| | P(wait) | mean wait s | p50 wait s | p95 wait s | p50 latency s | p95 latency s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| M/G/c (Allen–Cunneen) | {s.p_wait:.3g} | {s.mean_wait_s:.3g} | {_s(s.p50_wait_s)} | "
        f"{_s(s.p95_wait_s)} | {_s(s.p50_s)} | {_s(s.p95_s)} |",
    ]
    if s.sim_p95_s is not None:
        lines.append(f"| simulation | {s.sim_p_wait:.3g} | {s.sim_mean_wait_s:.3g} | "
                     f"{_s(s.sim_p50_wait_s)} | {_s(s.sim_p95_wait_s)} | "
                     f"{_s(s.sim_p50_s)} | {_s(s.sim_p95_s)} |")
        lines += ["", f"Servers by simulation (the same two constraints, simulated p95): "
                      f"{s.servers_by_simulation}. Simulated: {s.sim_hours:.3g} h of arrivals at "
                      f"the peak rate; at {_pct(s.utilisation)} the queue settles in "
                      f"~{_duration(s.relaxation_hours * 3600)}. " +
                  (f"Disagreement: {s.disagreement}." if s.disagreement else
                   "The model and the simulation agree (same server count, p95 within 10 %).")]
    if s.cost_per_hour is not None:
        lines += ["", f"Cost at ${s.price_per_gpu_hour:g}/GPU-hour: ${s.cost_per_hour:,.2f}/hour "
                      f"at peak, ${s.cost_per_1000_videos:,.2f} per 1000 videos."]
    lines += ["", "Per measured concurrency level:", "",
              "| in flight | videos/s | mean service s | service p95 s | latencies scaled × | "
              "servers for utilisation | servers for p95 | servers | binding | utilisation "
              "| p95 s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def dash(v):
        return "—" if v is None else v
    for lv in s.per_level:
        lines.append(f"| {lv.concurrency} | {lv.throughput:.3f} | {lv.mean_service_s:.2f} | "
                     f"{lv.service_p95_s:.2f} | {lv.scale:.2f} | {lv.servers_for_utilisation} | "
                     f"{dash(lv.servers_for_slo)} | {dash(lv.servers)} | {dash(lv.binding)} | "
                     f"{'—' if lv.utilisation is None else _pct(lv.utilisation)} | "
                     f"{_s(lv.p95_s)} |")
    if s.checks:
        lines += ["", "Simulated fleet sizes:", "", "| servers | utilisation | analytic p95 s | simulated p95 s |",
                  "| --- | --- | --- | --- |"]
        for c in s.checks:
            lines.append(f"| {c.servers} | {_pct(c.utilisation)} | {_s(c.p95_s)} | {_s(c.sim_p95_s)} |")
    lines += ["", "Model: jobs wait in one FIFO queue (the platform's job queue) and each server "
                  "runs a fixed number of them at once; each of those slots is a channel whose "
                  "service time is a request latency measured at that concurrency. Arrivals: "
                  f"rate {s.arrival_rate:.3f}/s, inter-arrival SCV {s.scv_arrival:g} "
                  "(1 = Poisson). Where k / E[S] exceeded the measured throughput X(k), the "
                  "latencies were scaled up so no server is credited with more than it delivered. "
                  "Allen–Cunneen is optimistic for bursty arrivals: trust the "
                  "simulation there. Utilisation is λ·E[S]/(N·k), the share of the fleet's "
                  "measured capacity busy at peak. The target keeps it below 1 because there the "
                  "wait grows as 1/(1 − ρ) and the time the queue needs to settle as 1/(1 − ρ)²: "
                  "a fleet planned at 99.x % has no room for a forecast error or a slow node, and "
                  "its steady-state p95 (the analytic figure) is reached only after a peak far "
                  "longer than any real one, which is also why a finite simulation reads lower "
                  "there.", ""]
    lines += [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n"


def to_html(md: str, title: str) -> str:
    """Just enough Markdown for this report: headings, tables, images, paragraphs."""
    out, table = [], []

    def flush():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= set("- ")]
            cells = [[html.escape(c.strip()) for c in r.strip().strip("|").split("|")] for r in rows]
            out.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in cells[0]) + "</tr>" +
                       "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in cells[1:]) +
                       "</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("# "):
            out.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1:-1]
            out.append(f'<p><img src="{html.escape(src)}" alt=""></p>')
        elif line.strip():
            text = html.escape(line)
            while text.count("**") >= 2:
                text = text.replace("**", "<b>", 1).replace("**", "</b>", 1)
            out.append(f"<p>{text}</p>")
    flush()
    return (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}</style>\n"
            + "\n".join(out) + "\n")


def write(curve: ServiceCurve, sizing: Sizing, source: str, out: Path,
          estimate_md: str = "") -> Path:
    """out: the .md path; the .html and the plots go next to it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    images = plots(curve, sizing, out.with_suffix(""))
    md = markdown(sizing, source, images, estimate_md)
    out.write_text(md)
    out.with_suffix(".html").write_text(to_html(md, out.stem))
    return out

