"""Performance commands of the `t2vserve` CLI: `perf run`, `perf baseline`, `size`."""

import contextlib
import json
from pathlib import Path


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--concurrency takes integers separated by commas, got {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--request-rate takes numbers separated by commas, got {text!r}") from None


@contextlib.contextmanager
def _served(profile, out_dir: Path):
    """A tritonserver for the profile for the duration of the block (`--serve`)."""
    from t2vserve.cli import _ensure_artifacts
    from t2vserve.serve.repository import render_repository
    from t2vserve.serve.server import ServerConfig, start, stop, wait_ready

    _ensure_artifacts(profile)
    repo = render_repository(profile, out_dir / "model_repository")
    cfg = ServerConfig.from_profile(profile, repo)
    log = out_dir / "tritonserver.log"
    print(f"starting tritonserver for {profile.name} (log {log}) ...", flush=True)
    proc = start(cfg, log)
    try:
        wait_ready(cfg, proc)
        yield f"{cfg.address}:{cfg.grpc_port}"
    finally:
        stop(proc)


def write_run(result: dict, path: Path) -> None:
    from t2vserve.perf.report import plot_run, run_markdown

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    plot_run(result, path.with_suffix(".png"))
    path.with_suffix(".md").write_text(run_markdown(result))
    print(f"wrote {path} (+ .png plot, .md summary)")


def _perf_run(args) -> int:
    from t2vserve.perf.baseline import compare, run_baseline, run_in_process
    from t2vserve.perf.report import run_markdown
    from t2vserve.perf.run import result_path, sweep
    from t2vserve.profile import load_profile

    profile = load_profile(args.profile)
    concurrency = _ints(args.concurrency) if args.concurrency else []
    rates = _floats(args.request_rate) if args.request_rate else []
    if args.serve:
        server = _served(profile, Path("build/perf"))
        url_cm = server
    else:
        url_cm = contextlib.nullcontext(args.url or
                                        f"{profile.data['server']['address']}:"
                                        f"{profile.data['server']['grpc_port']}")
    with url_cm as url:
        result = sweep(profile, url, concurrency, rates,
                       requests_per_window=args.requests_per_window, n_inputs=args.inputs,
                       log=lambda s: print(s, flush=True))
    if args.baseline:
        # after the server is gone (or idle): the baseline gets the machine to itself
        result["baseline"] = run_baseline(profile, args.baseline,
                                          log=lambda s: print(s, flush=True))
        result["in_process"] = run_in_process(profile, args.baseline,
                                              log=lambda s: print(s, flush=True))
        result["comparison"] = compare(result)
    path = Path(args.output) if args.output else result_path(result, Path(args.out_dir))
    write_run(result, path)
    print(run_markdown(result))
    return 0


def _perf_baseline(args) -> int:
    from t2vserve.perf.baseline import compare, run_baseline, run_in_process
    from t2vserve.profile import load_profile

    profile = load_profile(args.profile)
    base = run_baseline(profile, args.requests, log=lambda s: print(s, flush=True))
    in_process = run_in_process(profile, args.requests, log=lambda s: print(s, flush=True))
    if not args.result:
        for r in (base, in_process):
            print(json.dumps({k: v for k, v in r.items() if k != "latencies_ms"}, indent=1,
                             ensure_ascii=False))
        return 0
    path = Path(args.result)
    result = json.loads(path.read_text())
    result["baseline"] = base
    result["in_process"] = in_process
    result["comparison"] = compare(result)
    write_run(result, path)
    cmp = result["comparison"]
    print(f"ours over baseline at concurrency {cmp['max_concurrency']}: "
          f"{cmp['throughput_ratio_at_max_concurrency']:.2f}x throughput")
    return 0


def _target_utilisation(text: str) -> float:
    import argparse

    try:
        u = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text!r}") from None
    if not 0 < u <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1] (0.8 = 80 % busy at peak), "
                                         f"got {text}")
    return u


# options that choose the DiT forwards per video of a --gpu estimate, and the modes they fit
_MODE_OPTIONS = {"--cfg-interval": ("base", "cached"), "--no-cfg": ("base", "cached"),
                 "--steps": ("base", "cached"), "--cache-saving": ("cached",),
                 "--cache-setting": ("cached",), "--distilled-steps": ("distilled",)}


def _check_mode_options(args) -> None:
    given = [opt for opt, v in (
        ("--mode", args.mode), ("--forwards", args.forwards), ("--from-result", args.from_result),
        ("--cfg-interval", args.cfg_interval), ("--cache-saving", args.cache_saving),
        ("--cache-setting", args.cache_setting), ("--distilled-steps", args.distilled_steps),
        ("--no-cfg", args.no_cfg or None), ("--steps", args.steps)) if v is not None]
    if args.result:
        if given := [g for g in given if g != "--steps"]:
            raise ValueError(f"{', '.join(given)}: only with --gpu; a measured service curve "
                             f"(--result) already holds the sampling it was measured with")
        return
    if args.forwards is not None:
        if other := [g for g in given if g not in ("--forwards", "--steps", "--no-cfg")]:
            raise ValueError(f"--forwards gives the DiT forwards per video directly; drop "
                             f"{', '.join(other)}, or drop --forwards and use --mode "
                             f"base|cached|distilled")
        return
    if args.mode is not None:
        for opt, modes in _MODE_OPTIONS.items():
            if opt in given and args.mode not in modes:
                raise ValueError(f"{opt} applies to --mode {' or '.join(modes)} (or to the "
                                 f"side-by-side table, without --mode), not --mode {args.mode}")
    if args.cfg_interval is not None and args.no_cfg:
        raise ValueError("--cfg-interval says on which steps CFG runs; it cannot be combined "
                         "with --no-cfg")
    if args.cache_setting is not None and args.from_result is None:
        raise ValueError("--cache-setting picks a cached entry of --from-result; give "
                         "--from-result")


def _schedules(args, modes):
    from t2vserve.perf.fleet_modes import read_measured, schedules

    measured = []
    if args.from_result:
        measured = read_measured(json.loads(Path(args.from_result).read_text()),
                                 args.from_result)
    return schedules(modes, steps=args.steps or 50, cfg=not args.no_cfg,
                     cfg_interval=args.cfg_interval, cache_saving=args.cache_saving,
                     distilled_steps=args.distilled_steps, measured=measured,
                     measured_from=args.from_result or "", cache_setting=args.cache_setting)


def _gpu(args):
    return float(args.gpu) if args.gpu.replace(".", "", 1).isdigit() else args.gpu


def _options(args) -> dict:
    # the options, so the report can be made again with the same ones
    return {k: v for k, v in vars(args).items()
            if k not in ("func", "command", "verbose", "out", "out_dir")}


def _size_modes(args, demand, slo) -> int:
    from t2vserve.perf import fleet_modes

    fleets = fleet_modes.size_modes(
        _schedules(args, fleet_modes.MODES), _gpu(args), args.width, args.height, args.frames,
        demand, slo, utilisation=args.utilisation, preset=args.preset,
        target_utilisation=args.target_utilisation, price_per_gpu_hour=args.price_per_gpu_hour)
    md = fleet_modes.markdown(fleets, demand, slo, args.target_utilisation,
                              args.price_per_gpu_hour)
    out = Path(args.out) if args.out else (
        Path(args.out_dir) / f"sizing-estimate-{args.gpu}-{args.width}x{args.height}x"
                             f"{args.frames}-modes-{args.peak_per_hour:g}ph.md")
    fleet_modes.write(fleets, md, _options(args), out)
    print(md)
    print(f"servers by mode: {fleet_modes.summary(fleets)}")
    print(f"report: {out} (+ .html, .json)")
    return 0


def _size(args) -> int:
    from t2vserve.perf import sizing_report
    from t2vserve.perf.roofline import GPU_PEAKS, DitSchedule, estimate_video, format_estimate
    from t2vserve.perf.sizing import Demand, ServiceCurve, Slo, size_fleet

    if (args.result is None) == (args.gpu is None):
        raise ValueError("give --result (a `perf run` JSON: measured) or --gpu (first "
                         f"principles; known: {', '.join(GPU_PEAKS)}, or a peak in TFLOP/s)")
    _check_mode_options(args)
    demand, slo = Demand(args.peak_per_hour, args.burstiness), Slo(args.p95_slo)
    if args.gpu and args.mode is None and args.forwards is None:
        if args.emit_values:
            raise ValueError("--emit-values needs one fleet: give --mode (or --forwards, or "
                             "--result) rather than sizing every mode side by side")
        return _size_modes(args, demand, slo)
    estimate_md = ""
    if args.result:
        result = json.loads(Path(args.result).read_text())
        curve = ServiceCurve.from_result(result)
        source = f"measured, {args.result} ({result.get('device', '?')})"
        stem = Path(args.result).stem
    else:
        steps = args.steps or 50
        if args.forwards is not None:
            sched = DitSchedule.given(args.forwards, steps, not args.no_cfg, "--forwards")
            what = f"{args.forwards:g}forwards"
        else:
            sched = _schedules(args, [args.mode])[0]
            what = f"{sched.steps}steps" + ("" if args.mode == "base" else f"-{args.mode}")
        if args.cfg_interval is not None:
            what += f"-cfg{args.cfg_interval:g}"
        est = estimate_video(_gpu(args), args.width, args.height, args.frames, schedule=sched,
                             utilisation=args.utilisation, preset=args.preset)
        estimate_md = format_estimate(est)
        print(estimate_md)
        curve = ServiceCurve.deterministic(est.seconds_per_video)
        source = f"{est.label}, {args.gpu} at {args.utilisation:.0%} of peak FLOP/s"
        stem = f"estimate-{args.gpu}-{args.width}x{args.height}x{args.frames}-{what}"
    sizing = size_fleet(curve, demand, slo, target_utilisation=args.target_utilisation,
                        price_per_gpu_hour=args.price_per_gpu_hour)
    out = Path(args.out) if args.out else Path(args.out_dir) / f"sizing-{stem}-{args.peak_per_hour:g}ph.md"
    sizing_report.write(curve, sizing, source, out, estimate_md)
    out.with_suffix(".json").write_text(json.dumps(
        {"source": source, "options": _options(args), "sizing": sizing.to_dict(),
         "estimate": est.to_dict() if args.gpu else None}, indent=1) + "\n")
    print(f"servers: {sizing.servers} (each {sizing.concurrency} in flight; utilisation "
          f"{sizing.utilisation:.2%} at peak, target {sizing.target_utilisation:.0%}; binding: "
          f"{sizing.binding}; {sizing.servers_for_utilisation} for the utilisation target, "
          f"{sizing.servers_for_slo} for the p95 SLO); p95 latency {sizing.p95_s:.2f} s "
          f"analytic, {sizing.sim_p95_s:.2f} s simulated; servers by simulation: "
          f"{sizing.servers_by_simulation}")
    if sizing.disagreement:
        print(f"disagreement: {sizing.disagreement}")
    if args.emit_values:
        from t2vserve.perf.chart_values import chart_values, write_values
        from t2vserve.profile import load_profile

        values = chart_values(load_profile(args.profile), sizing, mode=args.autoscaling)
        print(f"chart values: {write_values(values, args.emit_values)} (helm install -f it with "
              f"deploy/helm/t2vserve)")
    if sizing.cost_per_hour is not None:
        print(f"cost: ${sizing.cost_per_hour:,.2f}/hour at peak, "
              f"${sizing.cost_per_1000_videos:,.2f} per 1000 videos")
    print(f"report: {out} (+ .html, .json, plots)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("perf", help="load tests: perf_analyzer sweeps and the in-process baseline")
    perf = p.add_subparsers(dest="perf_command", required=True)

    r = perf.add_parser("run", help="perf_analyzer against t2v at each load level; writes "
                                    "perf/results/<date>-<host>-<profile>.json, .png, .md")
    r.add_argument("--profile", default="profiles/cpu-tiny.yaml",
                   help="deployment profile: the workload (sizes, steps) comes from its defaults")
    r.add_argument("--url", help="Triton gRPC address (default: the profile's server address)")
    r.add_argument("--serve", action="store_true",
                   help="start tritonserver for the profile here, and stop it afterwards")
    r.add_argument("--concurrency", default="1,2,4,8", help="comma list (default 1,2,4,8)")
    r.add_argument("--request-rate", help="comma list of Poisson request rates (videos/s)")
    r.add_argument("--requests-per-window", type=int, default=4,
                   help="requests per count window (3 windows per level); default 4")
    r.add_argument("--inputs", type=int, default=8, help="distinct prompts/seeds (default 8)")
    r.add_argument("--baseline", type=int, default=0, metavar="N",
                   help="then run N requests through diffusers' WanPipeline in process and "
                        "record ours/theirs (only meaningful when the server runs here)")
    r.add_argument("--out-dir", default="perf/results")
    r.add_argument("--output", help="result path (default: <out-dir>/<date>-<host>-<profile>.json)")
    r.set_defaults(func=_perf_run)

    b = perf.add_parser("baseline", help="the same workload through diffusers' WanPipeline, "
                                         "in process, one request after another")
    b.add_argument("--profile", default="profiles/cpu-tiny.yaml")
    b.add_argument("--requests", type=int, default=8)
    b.add_argument("--result", help="a `perf run` JSON to add the baseline and the ratio to")
    b.set_defaults(func=_perf_baseline)

    z = sub.add_parser("size", help="GPU fleet size for a peak demand and a p95 latency SLO, "
                                    "from a `perf run` result or a first-principles estimate")
    z.add_argument("--result", help="a `perf run` JSON (the measured service curve)")
    z.add_argument("--gpu", help="first principles instead: a GPU name (h100-sxm, h200, a100, "
                                 "l40s, ...) or its dense BF16 peak in TFLOP/s")
    z.add_argument("--peak-per-hour", type=float, required=True, help="peak videos per hour")
    z.add_argument("--p95-slo", type=float, default=60.0, help="p95 latency target, s (default 60)")
    z.add_argument("--target-utilisation", "--target-utilization", dest="target_utilisation",
                   type=_target_utilisation, default=0.8, metavar="U",
                   help="plan each server to be at most this busy at peak, a fraction in (0, 1] "
                        "(default 0.8); 1 sizes for the p95 SLO alone")
    z.add_argument("--burstiness", type=float, default=1.0,
                   help="squared coefficient of variation of inter-arrival times (1 = Poisson, "
                        "> 1 bursty); default 1")
    z.add_argument("--price-per-gpu-hour", type=float, help="for the cost lines")
    z.add_argument("--preset", default="wan2.2-ti2v-5b", help="--gpu: model dims (default 5B)")
    z.add_argument("--width", type=int, default=1280)
    z.add_argument("--height", type=int, default=704)
    z.add_argument("--frames", type=int, default=121)
    z.add_argument("--mode", choices=("base", "cached", "distilled"),
                   help="--gpu: size one sampling mode (a report with plots and the simulation "
                        "check); without it, base, cached and distilled side by side")
    z.add_argument("--steps", type=int, help="base and cached modes: steps (default 50)")
    z.add_argument("--no-cfg", action="store_true",
                   help="base and cached modes: no classifier-free guidance")
    z.add_argument("--cfg-interval", type=float, metavar="F",
                   help="base and cached modes: CFG on the first F of the steps only, in (0, 1]")
    z.add_argument("--cache-saving", type=float, metavar="X",
                   help="cached mode: X times fewer DiT forwards than the base at the same steps "
                        "(default: measured by --from-result, else assumed 2)")
    z.add_argument("--distilled-steps", type=int, metavar="N",
                   help="distilled mode: steps, no CFG (default 4; FastWan2.2's DMD uses 3)")
    z.add_argument("--forwards", type=float, metavar="N",
                   help="--gpu: DiT forwards per video given directly (one mode, 'given')")
    z.add_argument("--from-result", metavar="JSON",
                   help="DiT forwards per video measured by a run: a sampling table (modes or "
                        "rows, each with dit_forwards and steps) or a t2v response's info")
    z.add_argument("--cache-setting", metavar="NAME",
                   help="--from-result: the cached entry to take the saving from, where it "
                        "has several")
    z.add_argument("--utilisation", type=float, default=0.40,
                   help="--gpu: assumed fraction of the GPU's peak FLOP/s achieved while "
                        "busy (MFU; default 0.40); not the fleet's load, see --target-utilisation")
    z.add_argument("--out-dir", default="perf/results")
    z.add_argument("--out", help="report path (.md; .html, .json and plots next to it)")
    z.add_argument("--emit-values", metavar="FILE",
                   help="write deploy/helm/t2vserve values for the sized fleet (replicas, "
                        "autoscaler min/max and queue-time target, /dev/shm, grace period)")
    z.add_argument("--profile", default="profiles/h100-720p.yaml",
                   help="--emit-values: the deployment profile the chart serves")
    z.add_argument("--autoscaling", choices=("keda", "hpa", "none"), default="keda",
                   help="--emit-values: the chart's autoscaling mode (default keda)")
    z.set_defaults(func=_size)
