"""gpu-check's result files: gpu-<device-slug>-<date>.json and its Markdown summary."""

import json
from pathlib import Path

STAGE_MODELS = ("t2v", "text_encoder", "dit", "vae_decoder", "video_encoder")


def result_path(result: dict, out_dir: str | Path) -> Path:
    from t2vserve.perf.bench_gpu import device_slug

    return Path(out_dir) / f"gpu-{device_slug(result.get('device') or 'unknown')}-" \
                           f"{result['created'][:10]}.json"


def write_result(result: dict, out_dir: str | Path) -> Path:
    path = result_path(result, out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False, default=str) + "\n")
    path.with_suffix(".md").write_text(markdown(result))
    return path


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def markdown(r: dict) -> str:
    ph = r["phases"]
    t = r["timing"]
    lines = [f"# gpu-check: {r['preset']} on {r.get('device_label') or r.get('device')}", "",
             f"{r['created']}; torch {r.get('versions', {}).get('torch')}; total "
             f"{t['total_s']:.0f} s of a {t['budget_s']:.0f} s budget"
             + ("" if t["within_budget"] else " (**over**: " + "; ".join(t["over"] or
                                                                     ["total"]) + ")") + "."]
    if r.get("error"):
        lines += ["", f"**Stopped early**: {r['error']}"]
    for name, error in (r.get("failed_phases") or {}).items():
        lines += ["", f"**Phase {name} failed**: {error}"]
    if "mfu" in ph:
        m = ph["mfu"]
        lines += ["", f"DiT forward ({m['dtype']}, batch 2), measured matmul peak "
                      f"{m['peak_tflops']['measured']:,.1f} TFLOP/s:", "",
                  "| size | tokens | ms | TFLOP/s | MFU meas. | MFU sheet |",
                  "|---|---:|---:|---:|---:|---:|"]
        for d in m["dit"]:
            sheet = d.get("mfu_datasheet")
            lines.append(f"| {d['width']}x{d['height']}x{d['frames']} | {d['tokens']:,} | "
                         f"{d['latency_ms']:,.1f} | {d['tflops']:,.2f} | {d['mfu_measured']:.1%} | "
                         f"{'-' if sheet is None else format(sheet, '.1%')} |")
    if "requests" in ph:
        lines += ["", "Requests over gRPC (host<->device MiB per request, HtoD / DtoH, measured "
                      "with torch.profiler in each stage process):", "",
                  "| request | ok | s | " + " | ".join(STAGE_MODELS) + " |",
                  "|---|---|---:|" + "---:|" * len(STAGE_MODELS)]
        for q in ph["requests"]:
            if "transfer_bytes" not in q:
                lines.append(f"| {q['width']}x{q['height']}x{q['num_frames']}, {q['steps']} "
                             f"steps | NO: {q['error']} |")
                continue
            cells = []
            for m in STAGE_MODELS:
                b = q["transfer_bytes"].get(m)
                cells.append("-" if b is None else f"{_mib(b['HtoD'])} / {_mib(b['DtoH'])}")
            lines.append(f"| {q['width']}x{q['height']}x{q['num_frames']}, {q['steps']} steps | "
                         f"{'yes' if q['ok'] else 'NO'} | {q['wall_s']:.1f} | " + " | ".join(cells) + " |")
    if "perf_analyzer" in ph:
        p = ph["perf_analyzer"]
        w = p["workload"]
        lines += ["", f"perf_analyzer, {w['width']}x{w['height']}x{w['num_frames']}, "
                      f"{w['steps']} steps:", "", "| concurrency | videos/s | p50 ms | p95 ms |",
                  "|---:|---:|---:|---:|"]
        for lv in p["levels"]:
            lines.append(f"| {lv['concurrency']} | {lv['throughput']:.3f} | "
                         f"{lv['latency_ms']['p50']:,.0f} | {lv['latency_ms']['p95']:,.0f} |")
    mem = ph.get("memory_after_requests") or ph.get("memory_after_load")
    if mem:
        # torch's own count in each stage process, from the profiled requests (no CUDA
        # context; it still holds where nvidia-smi's pids do not match a container's)
        torch_mib: dict[str, float] = {}
        for q in ph.get("requests", []):
            for model, b in q.get("transfer_bytes", {}).items():
                if "cuda_max_allocated_mib" in b:
                    torch_mib[model] = max(torch_mib.get(model, 0.0), b["cuda_max_allocated_mib"])
        lines += ["", "Memory per stage process (after the requests):", "",
                  "| model | processes | GPU MiB (nvidia-smi) | torch max allocated MiB "
                  "| host RSS MiB |", "|---|---:|---:|---:|---:|"]
        for model, m in sorted(mem["stage_processes"].items()):
            gpu = m["gpu_mib"] if m["gpu_mib"] is not None else \
                ("no GPU" if isinstance(mem["gpu"], str) else "-")
            lines.append(f"| {model} | {len(m['pids'])} | {gpu} | "
                         f"{torch_mib.get(model, '-')} | {m['host_rss_mib']:,.0f} |")
    warnings = sorted({f"{model}: {w}" for q in ph.get("requests", [])
                       for model, b in q.get("transfer_bytes", {}).items()
                       for w in b.get("warnings", [])})
    if warnings:
        lines += ["", "Transfer measurement warnings:"] + [f"- {w}" for w in warnings]
    if r["skipped"]:
        lines += ["", "Skipped:"] + [f"- {k}: {v}" for k, v in r["skipped"].items()]
    return "\n".join(lines) + "\n"
