"""`t2vserve bench gpu`: the networks' latency and MFU on this machine (see perf/bench_gpu.py).
`t2vserve bench encoder`: x264 held to AVX2 against its own detection (perf/bench_encoder.py).
`t2vserve bench sampling`: quality against cost of the sampling modes, served (perf/sampling_table.py).
`t2vserve bench jobs`: a burst of async jobs through Redis and the workers (perf/jobs_burst.py).
`t2vserve bench compliance`: the compliance filter's time per listing (perf/bench_compliance.py).
`t2vserve bench kernels`: the fused Triton kernels' GB/s, and the DiT and VAE with them on
and off (perf/bench_kernels.py)."""


def _parse_shapes(values: list[str]) -> list[tuple[int, int, int]]:
    """["1280x704x121", ...] -> [(1280, 704, 121), ...]; [] if any is not WIDTHxHEIGHTxFRAMES."""
    try:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in values]
    except ValueError:
        return []
    return shapes if all(len(s) == 3 for s in shapes) else []


def _bench_gpu(args) -> int:
    from t2vserve.perf.bench_gpu import bench_markdown, run_bench, write_bench

    shapes = _parse_shapes(args.shape) if args.shape else None
    if shapes is not None and not shapes:
        raise ValueError(f"--shape takes WIDTHxHEIGHTxFRAMES, e.g. 1280x704x121; got {args.shape}")
    result = run_bench(preset=args.preset, device=args.device, dtype=args.dtype, shapes=shapes,
                       repeats=args.repeats, warmup=args.warmup, compile=args.compile,
                       cuda_graphs=args.cuda_graphs, baseline=not args.no_baseline,
                       log=lambda s: print(s, flush=True))
    path = write_bench(result, args.out_dir)
    print(bench_markdown(result))
    print(f"wrote {path} (+ .md summary)")
    return 0


def _bench_encoder(args) -> int:
    from t2vserve.perf.bench_encoder import SIZES, markdown, run_bench, write_bench

    sizes = _parse_shapes(args.shape) if args.shape else SIZES
    if not sizes or any(min(s) < 1 or s[0] % 8 or s[1] % 8 for s in sizes):
        raise ValueError("--shape takes WIDTHxHEIGHTxFRAMES with width and height multiples "
                         f"of 8, e.g. 832x480x49; got {args.shape}")
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.noisy_repeats < 0:
        raise ValueError(f"--noisy-repeats must be >= 0, got {args.noisy_repeats}")
    result = run_bench(sizes, repeats=args.repeats, noisy_repeats=args.noisy_repeats,
                       log=lambda s: print(s, flush=True))
    path = write_bench(result, args.out_dir)
    print(markdown(result))
    print(f"wrote {path} (+ .md summary)")
    return 0


def _bench_sampling(args) -> int:
    import json
    from pathlib import Path

    from t2vserve.perf.sampling_report import markdown, merge, write
    from t2vserve.perf.sampling_table import default_rows, distilled_available, run_table

    if args.prompts is not None and not 1 <= args.prompts <= 16:
        raise ValueError(f"--prompts must be 1..16 (of the 16 colour prompts), got {args.prompts}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    rows = default_rows(distilled=distilled_available())
    if args.only:
        wanted = [v.strip() for v in args.only.split(",") if v.strip()]
        known = sorted({r.group or r.variant for r in rows[1:]})
        if not wanted or any(v not in known for v in wanted):
            raise ValueError(f"--only takes variants among {', '.join(known)}, got {args.only!r}")
        rows = rows[:1] + [r for r in rows[1:] if (r.group or r.variant) in wanted]
    if args.merge_into and not Path(args.merge_into).exists():
        raise ValueError(f"--merge-into {args.merge_into}: no such result")
    result = run_table(args.profile, rows=rows, prompts=args.prompts,
                       seeds=tuple(range(args.seeds)), work_dir=args.work_dir,
                       log=lambda s: print(s, flush=True))
    if args.merge_into:
        result = merge(json.loads(Path(args.merge_into).read_text()), result)
    path = write(result, args.out_dir)
    print(markdown(result))
    print(f"wrote {path} (+ .md)")
    for t in result["targets"]:
        if not t["met"]:
            print(f"MISSED: {t['target']}: {'; '.join(t['figures'])}")
    return 0  # a missed target is a finding, not a failure


def _bench_jobs(args) -> int:
    import contextlib
    import signal
    import sys
    from pathlib import Path

    from t2vserve.perf.jobs_burst import markdown, run_burst, write

    if args.jobs < 1 or args.workers < 1:
        raise ValueError(f"--jobs and --workers must be >= 1, got {args.jobs} and {args.workers}")
    size = _parse_shapes([args.shape])
    if not size:
        raise ValueError(f"--shape takes WIDTHxHEIGHTxFRAMES, e.g. 64x64x5; got {args.shape}")
    if bool(args.url) == bool(args.serve):
        raise ValueError("give --url HOST:PORT (a running server) or --serve (start one)")
    # SIGTERM as Ctrl-C: the driver's cleanup stops Redis, the API and the workers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.serve:
        from t2vserve.perf.commands import _served
        from t2vserve.profile import load_profile
        from t2vserve.serve.server import free_ports

        profile = load_profile(args.profile)
        # ports of its own, so a server already on the profile's ports is left alone
        http, grpc, metrics, supervisor = free_ports(4)
        profile.data["server"].update(http_port=http, grpc_port=grpc, metrics_port=metrics,
                                      supervisor_port=supervisor)
        server = _served(profile, Path(args.work_dir) / "server")
        name = profile.name
    else:
        server, name = contextlib.nullcontext(args.url), args.profile_name
    with server as url:
        result = run_burst(url, jobs=args.jobs, workers=args.workers, size=size[0],
                           steps=args.steps, guidance=args.guidance,
                           work_dir=Path(args.work_dir), profile=name,
                           log=lambda s: print(s, flush=True))
    if args.note:
        result["note"] = args.note
    path = write(result, args.out_dir)
    print(markdown(result))
    print(f"wrote {path} (+ .md)")
    return 0 if result["completed"] == args.jobs and result["duplicates"]["ok"] else 1


def _bench_compliance(args) -> int:
    from t2vserve.perf.bench_compliance import markdown, run_bench, write_bench

    if args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    result = run_bench(rounds=args.rounds)
    path = write_bench(result, args.out_dir)
    print(markdown(result))
    print(f"wrote {path} (+ .md)")
    return 0 if result["within_budget"] else 1


def _bench_kernels(args) -> int:
    from t2vserve.perf.bench_kernels import markdown, run_bench, write_bench

    resolutions = tuple(r.strip() for r in args.shapes.split(",") if r.strip())
    result = run_bench(device=args.device, resolutions=resolutions, repeats=args.repeats,
                       compile=not args.no_compile, e2e=not args.no_end_to_end,
                       interpret=args.interpret, log=lambda s: print(s, flush=True))
    path = write_bench(result, args.out_dir)
    print(markdown(result))
    print(f"wrote {path} (+ .md)")
    return 0  # a missed target is a finding, not a failure


def register(sub) -> None:
    p = sub.add_parser("bench", help="micro-benchmarks of the networks on this machine")
    bench = p.add_subparsers(dest="bench_command", required=True)

    g = bench.add_parser("gpu", help="DiT (ours vs diffusers), VAE decode and umT5 latency, "
                                     "TFLOP/s and MFU against a matmul peak measured here; "
                                     "writes <out-dir>/gpu-<device>-<date>.json and .md")
    g.add_argument("--preset", default="wan2.2-ti2v-5b", choices=["tiny", "wan2.2-ti2v-5b"],
                   help="model size (default wan2.2-ti2v-5b; tiny runs on a CPU)")
    g.add_argument("--dtype", choices=["bf16", "fp16", "fp32"],
                   help="compute dtype (default bf16 on CUDA, fp32 on CPU)")
    g.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    g.add_argument("--compile", action="store_true", help="torch.compile the DiT")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="capture the DiT as one CUDA graph per input shape and replay it")
    g.add_argument("--no-baseline", action="store_true",
                   help="skip diffusers' eager WanTransformer3DModel forward")
    g.add_argument("--shape", action="append", metavar="WxHxF",
                   help="video size to bench, repeatable (default: the preset's two; "
                        "the 5B's are 832x480x73 and 1280x704x121)")
    g.add_argument("--repeats", type=int, default=5, help="timed runs per figure (default 5)")
    g.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    g.add_argument("--out-dir", default="perf/results")
    g.set_defaults(func=_bench_gpu)

    e = bench.add_parser("encoder", help="MP4 encoding with x264 held to AVX2 (as served on "
                                         "AVX-512 CPUs) against x264's own detection: time and "
                                         "distinct outputs; writes <out-dir>/encoder-<date>-<host>.json and .md")
    e.add_argument("--shape", action="append", metavar="WxHxF",
                   help="clip size, repeatable (default 128x128x17, 832x480x49, 1280x704x121)")
    e.add_argument("--repeats", type=int, default=5, help="encodes per setting (default 5)")
    e.add_argument("--noisy-repeats", type=int, default=40,
                   help="encodes per setting of a small noise-like clip, where x264's AVX-512 "
                        "non-determinism shows (default 40; 0 skips it)")
    e.add_argument("--out-dir", default="perf/results")
    e.set_defaults(func=_bench_encoder)

    s = bench.add_parser("sampling", help="the sampling modes (base 50/20/8 steps, two step-cache "
                                          "thresholds, a CFG interval, the distilled 4-step "
                                          "student) served by tritonserver: DiT forwards, wall "
                                          "time, PSNR/SSIM to base 50, colour adherence; writes "
                                          "<out-dir>/sampling-<date>-<host>.json and .md")
    s.add_argument("--profile", default="profiles/cpu-tiny.yaml",
                   help="the profile the table's copy starts from (default cpu-tiny)")
    s.add_argument("--prompts", type=int, help="the first N of the 16 colour prompts (default 16)")
    s.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per prompt (default 2)")
    s.add_argument("--work-dir", default="build/sampling-table",
                   help="the table's profile, repository and server log")
    s.add_argument("--only", metavar="VARIANT[,VARIANT]",
                   help="measure only these variants' rows (and the base reference)")
    s.add_argument("--merge-into", metavar="JSON",
                   help="add the rows measured to this earlier table (its reference clips must "
                        "come out identical) and write the merged table")
    s.add_argument("--out-dir", default="perf/results")
    s.set_defaults(func=_bench_sampling)

    j = bench.add_parser("jobs", help="a burst of async jobs (/v1/videos) through its own Redis, "
                                      "one jobs API and N workers on one server: all complete, "
                                      "none duplicated, queue wait and throughput; writes "
                                      "<out-dir>/jobs-burst-<date>-<host>.json and .md")
    j.add_argument("--jobs", type=int, default=200, help="jobs in the burst (default 200)")
    j.add_argument("--workers", type=int, default=2,
                   help="`t2vserve jobs-worker` processes, one generation at a time each "
                        "(default 2)")
    j.add_argument("--url", help="Triton gRPC host:port of a running t2vserve server, used by "
                                 "nothing else during the run (its dit count is checked)")
    j.add_argument("--serve", action="store_true",
                   help="start tritonserver for --profile on free loopback ports instead")
    j.add_argument("--profile", default="profiles/cpu-tiny.yaml",
                   help="the profile --serve serves (default cpu-tiny)")
    j.add_argument("--profile-name", help="with --url: the served profile's name, for the record")
    j.add_argument("--shape", default="64x64x5", metavar="WxHxF", help="clip size (64x64x5)")
    j.add_argument("--steps", type=int, default=2, help="denoising steps per clip (2)")
    j.add_argument("--guidance", type=float,
                   help="guidance_scale (default: the server's default)")
    j.add_argument("--work-dir", default="build/jobs-burst",
                   help="Redis, storage and the service's logs (wiped first)")
    j.add_argument("--note", help="a line for the result (e.g. what else ran on the machine)")
    j.add_argument("--out-dir", default="perf/results")
    j.set_defaults(func=_bench_jobs)

    c = bench.add_parser("compliance", help="the compliance filter's time per listing (budget "
                                            "1 ms; exit 1 past it); writes "
                                            "<out-dir>/compliance-<date>-<host>.json and .md")
    c.add_argument("--rounds", type=int, default=50, help="times each listing is checked (50)")
    c.add_argument("--out-dir", default="perf/results")
    c.set_defaults(func=_bench_compliance)

    k = bench.add_parser("kernels", help="the fused Triton kernels against their torch reference "
                                         "and torch.compile of it, GB/s against a measured copy "
                                         "and the datasheet, at the 5B's 480P/720P shapes; the "
                                         "DiT (2 layers at 5B dims) and VAE decode with kernels "
                                         "on and off; writes <out-dir>/kernels-<device>-"
                                         "<date>.json and .md (needs CUDA)")
    k.add_argument("--device", default="cuda", help="cuda, cuda:1 (cpu only with --interpret)")
    k.add_argument("--shapes", default="480p,720p", help="480p, 720p or both (default)")
    k.add_argument("--repeats", type=int, default=20, help="timed calls per figure (default 20)")
    k.add_argument("--no-compile", action="store_true", help="skip torch.compile of the references")
    k.add_argument("--no-end-to-end", action="store_true",
                   help="kernels only: skip the DiT forward and VAE decode on/off")
    k.add_argument("--interpret", action="store_true",
                   help="with --device cpu: tiny shapes under Triton's interpreter (a smoke "
                        "test of this command; its timings mean nothing)")
    k.add_argument("--out-dir", default="perf/results")
    k.set_defaults(func=_bench_kernels)
