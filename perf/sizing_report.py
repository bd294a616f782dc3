"""The fleet-sizing report: Markdown and HTML with two plots (servers vs peak demand,
p95 latency vs load), from a `Sizing` and the service curve it came from."""

import html
import math
from pathlib import Path

import numpy as np

from t2vserve.perf.report import _plt
from t2vserve.perf.sizing import ServiceCurve, Sizing, Slo, demand_sweep, latency_vs_load


def _s(v) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.2f}"


def plots(curve: ServiceCurve, sizing: Sizing, stem: Path) -> list[Path]:
    plt = _plt()
    slo = Slo(sizing.slo_p95_s)
    peaks = sorted({round(sizing.peak_per_hour * f) for f in np.linspace(0.1, 2.0, 20)} - {0})
    sweep = demand_sweep(curve, peaks, sizing.scv_arrival, slo)
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    ax.step([p for p, _ in sweep], [n for _, n in sweep], where="post")
    ax.plot([sizing.peak_per_hour], [sizing.servers], "ro",
            label=f"{sizing.peak_per_hour:g}/h → {sizing.servers} servers")
    ax.set_xlabel("peak demand (videos/hour)")
    ax.set_ylabel("servers (GPUs) needed")
    ax.set_title(f"p95 ≤ {sizing.slo_p95_s:g} s, arrivals SCV {sizing.scv_arrival:g}, "
                 f"{sizing.concurrency} in flight per server", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    demand_png = stem.with_name(stem.name + "-demand.png")
    fig.savefig(demand_png)
    plt.close(fig)

    loads = [0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95]
    rows = latency_vs_load(curve, sizing.concurrency, sizing.servers, loads,
                           scv_arrival=sizing.scv_arrival)
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    ax.plot([r[1] for r in rows], [r[2] for r in rows], "o-", label="M/G/c (Allen–Cunneen)")
    ax.plot([r[1] for r in rows], [r[3] for r in rows], "s--", label="discrete-event simulation")
    ax.axhline(sizing.slo_p95_s, color="r", lw=1, label=f"SLO p95 {sizing.slo_p95_s:g} s")
    ax.axvline(sizing.utilisation, color="grey", lw=1, ls=":", label="at the sized peak")
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
        f"# Fleet sizing: {s.peak_per_hour:g} videos/hour, p95 ≤ {s.slo_p95_s:g} s",
        "",
        f"Service curve: {source}" + (" (latencies synthesised from percentiles)" if s.synthetic else ""),
        "",
    ]
    if estimate_md:
        lines += [estimate_md, ""]
    lines += [
        f"**{s.servers} servers** (GPUs), each held at {s.concurrency} requests in flight "
        f"({s.channels} channels); utilisation {s.utilisation:.0%} at peak.",
        "",
        "| | p50 wait s | p95 wait s | p50 latency s | p95 latency s |",
        "| --- | --- | --- | --- | --- |",
        f"| M/G/c (Allen–Cunneen) | {_s(s.p50_wait_s)} | {_s(s.p95_wait_s)} | {_s(s.p50_s)} | {_s(s.p95_s)} |",
    ]
    if s.sim_p95_s is not None:
        lines.append(f"| simulation | {_s(s.sim_p50_wait_s)} | {_s(s.sim_p95_wait_s)} | "
                     f"{_s(s.sim_p50_s)} | {_s(s.sim_p95_s)} |")
        lines += ["", f"Servers by simulation: {s.servers_by_simulation}. " +
                  (f"Disagreement: {s.disagreement}." if s.disagreement else
                   "The model and the simulation agree (same server count, p95 within 10 %).")]
    if s.cost_per_hour is not None:
        lines += ["", f"Cost at ${s.price_per_gpu_hour:g}/GPU-hour: ${s.cost_per_hour:,.2f}/hour "
                      f"at peak, ${s.cost_per_1000_videos:,.2f} per 1000 videos."]
    lines += ["", "Per measured concurrency level:", "",
              "| in flight | videos/s | mean service s | service p95 s | latencies scaled × | servers | p95 s |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for lv in s.per_level:
        lines.append(f"| {lv.concurrency} | {lv.throughput:.3f} | {lv.mean_service_s:.2f} | "
                     f"{lv.service_p95_s:.2f} | {lv.scale:.2f} | "
                     f"{lv.servers if lv.servers is not None else '—'} | {_s(lv.p95_s)} |")
    if s.checks:
        lines += ["", "Simulated fleet sizes:", "", "| servers | utilisation | analytic p95 s | simulated p95 s |",
                  "| --- | --- | --- | --- |"]
        for c in s.checks:
            lines.append(f"| {c.servers} | {c.utilisation:.2f} | {_s(c.p95_s)} | {_s(c.sim_p95_s)} |")
    lines += ["", "Model: jobs wait in one FIFO queue (the platform's job queue) and each server "
                  "runs a fixed number of them at once; each of those slots is a channel whose "
                  "service time is a request latency measured at that concurrency. Arrivals: "
                  f"rate {s.arrival_rate:.3f}/s, inter-arrival SCV {s.scv_arrival:g} "
                  "(1 = Poisson). Where k / E[S] exceeded the measured throughput X(k), the "
                  "latencies were scaled up so no server is credited with more than it delivered. "
                  "Allen–Cunneen is optimistic for bursty arrivals: trust the "
                  "simulation there.", ""]
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

