"""Plots and Markdown for perf results (matplotlib, Agg: no display needed)."""

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(result: dict, path: Path) -> Path:
    """Throughput against latency, one point per load level (p50 and p95), with the
    in-process baseline when the result has one."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    levels = result["levels"]
    for q, style in (("p50", "o-"), ("p95", "s--")):
        xs = [lv["latency_ms"][q] / 1000 for lv in levels]
        ys = [lv["throughput"] for lv in levels]
        ax.plot(xs, ys, style, label=f"t2vserve (Triton), {q} latency")
    for lv in levels:
        label = f"c={lv['concurrency']}" if lv.get("concurrency") else f"{lv['request_rate']:g}/s"
        ax.annotate(label, (lv["latency_ms"]["p50"] / 1000, lv["throughput"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    base = result.get("baseline")
    if base:
        ax.plot([base["latency_ms"]["p50"] / 1000], [base["throughput"]], "r*", markersize=12,
                label="diffusers WanPipeline in process (p50)")
    own = result.get("in_process")
    if own:
        ax.plot([own["latency_ms"]["p50"] / 1000], [own["throughput"]], "gD", markersize=8,
                label="t2vserve Pipeline in process, ONNX Runtime (p50)")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("latency per video (s)")
    ax.set_ylabel("throughput (videos/s)")
    ax.set_title(f"{result['profile']} on {result['device']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_markdown(result: dict) -> str:
    """A table per level, the per-model split at each level and the baseline comparison."""
    w = result["workload"]
    lines = [
        f"# perf run: {result['profile']} — {result['created']}",
        "",
        f"Device: {result['device']} (host {result['host']}); Triton "
        f"{result['server']['triton_version']}; workload {w['width']}×{w['height']}×"
        f"{w['num_frames']} frames, {w['steps']} steps, guidance {w['guidance_scale']}, "
        f"{w['inputs']} zh/en prompts.",
        "",
        "| load | videos/s | p50 s | p90 s | p95 s | p99 s | measured requests | dit requests/execution |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for lv in result["levels"]:
        load = f"concurrency {lv['concurrency']}" if lv.get("concurrency") else f"{lv['request_rate']:g} req/s"
        lat = lv["latency_ms"]
        dit = lv.get("batching", {}).get("dit", {})
        lines.append(f"| {load} | {lv['throughput']:.3f} | {lat['p50'] / 1000:.2f} | "
                     f"{lat['p90'] / 1000:.2f} | {lat['p95'] / 1000:.2f} | {lat['p99'] / 1000:.2f} | "
                     f"{len(lv['latencies_ms'])} | {dit.get('mean_requests_per_execution', '—')} |")
    lines += ["", "Per composing model (average per request: queue / compute, ms):", "",
              "| load | " + " | ".join(result["composing_models"]) + " |",
              "| --- |" + " --- |" * len(result["composing_models"])]
    for lv in result["levels"]:
        load = f"c={lv['concurrency']}" if lv.get("concurrency") else f"{lv['request_rate']:g}/s"
        cells = []
        for name in result["composing_models"]:
            m = lv["models"].get(name)
            cells.append(f"{m['queue_ms']:.1f} / {m['compute_ms']:.1f}" if m else "—")
        lines.append(f"| {load} | " + " | ".join(cells) + " |")
    base = result.get("baseline")
    if base:
        cmp = result.get("comparison", {})
        lines += ["", f"Baseline: {base['name']}, {base['requests']} requests: "
                      f"{base['throughput']:.3f} videos/s, p50 {base['latency_ms']['p50'] / 1000:.2f} s "
                      f"(pipeline {base['stages_ms']['pipeline']:.0f} ms + MP4 {base['stages_ms']['mp4']:.0f} ms).",
                  "",
                  "Ours over baseline, throughput: " + ", ".join(
                      f"c={c}: {r:.2f}×" for c, r in cmp.get("throughput_ratio", {}).items()) +
                  f"; p50 latency at c={cmp.get('min_concurrency')}: "
                  f"{cmp.get('p50_latency_ratio_at_min_concurrency')}× the baseline's."]
    own = result.get("in_process")
    if own:
        cmp = result.get("comparison", {})
        lines += ["", f"In process on ONNX Runtime (same graphs as served, no server): "
                      f"{own['throughput']:.3f} videos/s, p50 {own['latency_ms']['p50'] / 1000:.2f} s "
                      f"(pipeline {own['stages_ms']['pipeline']:.0f} ms + MP4 {own['stages_ms']['mp4']:.0f} ms). "
                      f"Runtime alone: {cmp.get('in_process_onnxruntime_over_baseline')}× the baseline; "
                      f"serving at c={cmp.get('max_concurrency')} over in-process ONNX Runtime: "
                      f"{cmp.get('served_at_max_concurrency_over_in_process_onnxruntime')}×."]
    return "\n".join(lines) + "\n"
