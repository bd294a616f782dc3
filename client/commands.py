"""Client-side commands of the `t2vserve` CLI: generate, batch, experiment, gateway."""

import json
import os
import sys
import time
from pathlib import Path

DEFAULT_URL = "127.0.0.1:8001"
URL_HELP = (f"Triton gRPC host:port ({DEFAULT_URL}), or several servers, balanced round robin "
            "with retries on the others: ipv4:10.0.0.1:8001,10.0.0.2:8001, "
            "dns:///name:port (every address of the name), or 10.0.0.1:8001,10.0.0.2:8001")


def _url(text: str) -> str:
    """--url checked before any connection: the gRPC target, or argparse's error."""
    import argparse

    from t2vserve.client.core import grpc_target

    try:
        return grpc_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _use_rules(args) -> None:
    """--rules / --brands: the compliance files this run loads, passed on as $T2V_RULES
    (added to the shipped sets) and $T2V_BRANDS (in place of the example brand list)."""
    if args.rules:
        extra = [p for p in os.environ.get("T2V_RULES", "").split(os.pathsep) if p]
        os.environ["T2V_RULES"] = os.pathsep.join([*extra, *args.rules])
    if args.brands:
        os.environ["T2V_BRANDS"] = args.brands


def _rule_options(p) -> None:
    p.add_argument("--rules", action="append", metavar="FILE",
                   help="a compliance rule file added to the shipped zh/en sets (repeatable; "
                        "also $T2V_RULES); docs/COMPLIANCE.md")
    p.add_argument("--brands", metavar="FILE", help="the platform's brand-term file, in place "
                   "of the shipped example (also $T2V_BRANDS)")


def _generate(args) -> int:
    from t2vserve.client.compliance import ComplianceBlocked, RuleFileError, check_prompt
    from t2vserve.client.core import T2VClient
    from t2vserve.client.listing import listing_to_prompt

    if (args.prompt is None) == (args.product is None):
        print("t2vserve generate: give a prompt or --product listing.json", file=sys.stderr)
        return 2
    _use_rules(args)
    seed = args.seed
    if args.product:
        listing = json.loads(Path(args.product).read_text(encoding="utf-8"))
        try:
            result = listing_to_prompt(listing)  # checked for compliance (warnings name hits)
        except (ComplianceBlocked, RuleFileError) as exc:
            print(f"t2vserve generate: {exc}", file=sys.stderr)
            return 2
        prompt = result.prompt
        for warning in result.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        seed = seed if seed is not None else listing.get("seed")
        print(f"prompt ({result.language}, {result.category}): {prompt}")
    else:
        try:  # a free prompt is checked as a listing's is
            check = check_prompt(args.prompt).raise_if_blocked()
        except (ComplianceBlocked, RuleFileError) as exc:
            print(f"t2vserve generate: {exc}", file=sys.stderr)
            return 2
        if check.hits:
            print(f"compliance: {check.action} {json.dumps(check.to_dict(), ensure_ascii=False)}",
                  file=sys.stderr)
        prompt = check.prompt
    kwargs = dict(width=args.width, height=args.height, fps=args.fps, steps=args.steps,
                  guidance_scale=args.guidance_scale, seed=seed,
                  negative_prompt=args.negative_prompt, model_variant=args.variant)
    if args.duration is not None:
        kwargs["duration"] = args.duration
        kwargs["fps"] = args.fps or 24
    else:
        kwargs["num_frames"] = args.num_frames
    t0 = time.perf_counter()
    with T2VClient(args.url) as client:
        video = client.generate(prompt, timeout=args.timeout, priority=args.priority, **kwargs)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(video.mp4)
    r = video.info.get("request", {})
    print(f"wrote {out}: {r.get('num_frames')} frames {r.get('width')}x{r.get('height')} "
          f"@{r.get('fps')} fps, seed {r.get('seed')}, {time.perf_counter() - t0:.1f} s")
    print("qc: " + ", ".join(f"{k} {v:.3g}" for k, v in video.qc.items()))
    return 0


def _batch(args) -> int:
    from t2vserve.client.batch import run_batch
    from t2vserve.client.compliance import RuleFileError, default_rules

    _use_rules(args)
    try:
        default_rules()
    except RuleFileError as exc:
        print(f"t2vserve batch: {exc}", file=sys.stderr)
        return 2
    from t2vserve.client.core import T2VError

    if args.jobs:
        if args.variants or args.all_variants:
            print("t2vserve batch: --variants and --all-variants go over gRPC, not with --jobs",
                  file=sys.stderr)
            return 2
        return _batch_jobs(args)
    try:
        arms = _arms(args)
        summary = run_batch(Path(args.catalog), Path(args.out_dir), url=args.url,
                            concurrency=args.concurrency, timeout=args.timeout, arms=arms)
    except (ValueError, T2VError) as exc:  # a split, another experiment's manifest, no server
        print(f"t2vserve batch: {exc}", file=sys.stderr)
        return 2
    print(f"{summary['ok']} ok, {summary['review']} for review, {summary['failed']} failed, "
          f"{summary['skipped']} already done; manifest: {summary['manifest']}")
    return 0 if summary["failed"] == 0 else 1


def _arms(args):
    """The experiment of --variants / --all-variants, its variants checked against what the
    server serves (before any clip is made); None without either."""
    from t2vserve.client.batch import Arms
    from t2vserve.client.core import T2VClient
    from t2vserve.client.experiment import parse_split

    if args.variants and args.all_variants:
        raise ValueError("give --variants or --all-variants, not both")
    if not (args.variants or args.all_variants):
        if args.experiment:
            raise ValueError("--experiment needs --variants or --all-variants")
        return None
    split = parse_split(args.variants) if args.variants else None
    with T2VClient(args.url) as client:
        served = list(client.server_info()["model_ids"])
    unknown = [v for v in (split or ()) if v not in served]
    if unknown:
        raise ValueError(f"--variants names {', '.join(unknown)}; the server serves "
                         f"{', '.join(served)}")
    name = args.experiment or Path(args.catalog).stem
    return Arms(name, tuple(split or served), split)


def _experiment_report(args) -> int:
    from t2vserve.client.experiment import ExperimentError, format_report, report

    try:
        r = report(Path(args.manifest), Path(args.outcomes) if args.outcomes else None,
                   control=args.control)
    except (ExperimentError, OSError) as exc:
        print(f"t2vserve experiment report: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(r, ensure_ascii=False, indent=1) if args.json else format_report(r))
    return 0


def _batch_jobs(args) -> int:
    from t2vserve.client.batch_jobs import JobsAuthError, run_batch_jobs

    key = args.api_key or os.environ.get("T2V_API_KEY")
    if not key:
        print("t2vserve batch --jobs: needs an API key: --api-key KEY or T2V_API_KEY",
              file=sys.stderr)
        return 2
    try:
        summary = run_batch_jobs(Path(args.catalog), Path(args.out_dir), jobs_url=args.jobs,
                                 api_key=key, concurrency=args.concurrency,
                                 in_flight=args.in_flight, timeout=args.timeout)
    except (JobsAuthError, ValueError) as exc:
        print(f"t2vserve batch: {exc}", file=sys.stderr)
        return 2
    print(f"{summary['ok']} ok, {summary['review']} for review, {summary['failed']} failed, "
          f"{summary['skipped']} already done; manifest: {summary['manifest']}")
    return 0 if summary["failed"] == 0 else 1


def _gateway(args) -> int:
    from t2vserve.client.compliance import RuleFileError
    from t2vserve.client.gateway import serve

    try:
        serve(args.url, args.host, args.port)
    except RuleFileError as exc:  # $T2V_RULES / $T2V_BRANDS, loaded before the port opens
        print(f"t2vserve gateway: {exc}", file=sys.stderr)
        return 2
    return 0


def register(sub) -> None:
    p = sub.add_parser("generate", help="one clip from a prompt or a product listing, over gRPC")
    p.add_argument("prompt", nargs="?", help="the prompt (Chinese or English)")
    p.add_argument("--product", help="a listing JSON file instead of a prompt")
    p.add_argument("-o", "--output", default="out.mp4")
    p.add_argument("--url", type=_url, default=DEFAULT_URL, help=URL_HELP)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--duration", type=float, help="seconds; frames = nearest 4k+1 to duration x fps")
    p.add_argument("--num-frames", type=int)
    p.add_argument("--fps", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--negative-prompt")
    p.add_argument("--variant", help="one of the server profile's model variants "
                   "(default: its first), e.g. a few-step or step-cached one")
    p.add_argument("--timeout", type=float, help="client deadline in seconds")
    p.add_argument("--priority", type=int, default=0, help="Triton priority (1 is highest)")
    _rule_options(p)
    p.set_defaults(func=_generate)

    p = sub.add_parser("batch", help="clips for a catalog (JSON lines), resumable, with manifest")
    p.add_argument("catalog", help="JSON lines: one listing (or {sku, prompt}) per line")
    p.add_argument("--out-dir", default="videos")
    p.add_argument("--concurrency", type=int, default=4,
                   help="clips in flight (with --jobs: HTTP requests at once)")
    p.add_argument("--url", type=_url, default=DEFAULT_URL, help=URL_HELP)
    p.add_argument("--timeout", type=float, help="per-clip client deadline in seconds")
    p.add_argument("--jobs", metavar="URL", help="make the clips through the jobs API at URL "
                   "(`t2vserve jobs`, e.g. http://127.0.0.1:8080) instead of gRPC: same "
                   "manifest (plus job ids), resume rules and progress line; a rerun gets "
                   "its jobs back by Idempotency-Key")
    p.add_argument("--api-key", help="with --jobs: the API key (default: $T2V_API_KEY)")
    p.add_argument("--in-flight", type=int, default=64,
                   help="with --jobs: jobs submitted and not finished at once (64)")
    p.add_argument("--variants", metavar="A=W,B=W", help="an A/B test: each SKU gets one of "
                   "these model variants, picked by a hash of the SKU and --experiment in "
                   "proportion to the weights (a rerun keeps it), e.g. base=0.5,cached=0.5")
    p.add_argument("--all-variants", action="store_true",
                   help="every variant the server serves, per SKU (<sku>.<variant>.mp4)")
    p.add_argument("--experiment", help="the experiment's name, part of the assignment's hash "
                   "(default: the catalog's file name without its suffix)")
    _rule_options(p)
    p.set_defaults(func=_batch)

    p = sub.add_parser("experiment", help="A/B experiments over model variants")
    esub = p.add_subparsers(dest="experiment_command", required=True)
    p = esub.add_parser("report", help="per variant: clips, failures, QC review, latency; with "
                        "--outcomes, conversion rates, Wilson intervals and a two-proportion test")
    p.add_argument("manifest", help="a batch's manifest.jsonl")
    p.add_argument("--outcomes", help="CSV with columns sku, impressions, conversions "
                   "[, variant]")
    p.add_argument("--control", help="the variant the others are tested against (default: "
                   "the first of the batch's --variants; with --all-variants, the first by name)")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=_experiment_report)

    p = sub.add_parser("gateway", help="HTTP shim: POST /t2v/generate JSON -> video/mp4")
    p.add_argument("--url", type=_url, default=DEFAULT_URL, help=URL_HELP)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=_gateway)
