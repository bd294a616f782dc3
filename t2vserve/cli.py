"""The `t2vserve` command line."""

import argparse
import json
import logging
import sys
import time

# what `pip install "t2vserve[server]"` adds to the client install
SERVER_MODULES = frozenset({
    "torch", "diffusers", "transformers", "accelerate", "safetensors", "sentencepiece", "onnx",
    "onnxruntime", "onnxscript", "av", "pytriton", "nvidia", "polygraphy", "matplotlib"})
# what `pip install "t2vserve[jobs]"` adds (the jobs API and workers)
JOBS_MODULES = frozenset({"dramatiq", "redis", "boto3", "botocore"})


def _export_tensorrt(args) -> int:
    from t2vserve.export.tensorrt_engine import ArtifactPaths, build_engines
    from t2vserve.profile import load_profile

    if not args.profile:
        raise ValueError("--format tensorrt needs --profile (the engines' optimisation "
                         "profiles come from its limits and batch sizes)")
    profile = load_profile(args.profile)
    _ensure_artifacts(profile, tensorrt=True)  # the served export and the FP32 graphs to parse
    paths = ArtifactPaths.for_profile(profile)
    print(f"building TensorRT engines for {profile.name} from {paths.onnx_dir} into "
          f"{paths.plans_dir}", flush=True)
    from t2vserve.export.tensorrt_compare import compare_all

    try:
        if not args.compare_only:
            result = build_engines(profile, paths.onnx_dir, paths.plans_dir,
                                   log=lambda s: print(s, flush=True))
            print(f"wrote {len(result.get('graphs', result))} plans and {paths.engines_json}")
        if args.compare or args.compare_only:
            print("polygraphy: TensorRT vs ONNX Runtime (FP32 graphs) at the smallest admitted "
                  "request, on real prompts", flush=True)
            results = compare_all(profile, log=lambda s: print(s, flush=True))
            return 0 if all(r.passed for r in results.values()) else 1
    except RuntimeError as exc:  # no TensorRT / no CUDA here: say so, no traceback
        raise ValueError(str(exc)) from None
    return 0


def _export(args) -> int:
    from t2vserve.export.onnx_export import export_preset
    from t2vserve.presets import build_components

    if args.format == "tensorrt":
        if args.lora:
            raise ValueError("--lora fuses into the ONNX export: export with --lora first; "
                             "--format tensorrt builds plans from the profile's artifacts")
        return _export_tensorrt(args)
    from t2vserve.export.lora import fuse_loras, parse_lora_arg

    loras = [parse_lora_arg(a) for a in args.lora or []]  # bad syntax or file: before any work
    out = args.out or f"build/artifacts/{args.preset}" + ("" if args.precision == "fp32" else f"-{args.precision}")
    t0 = time.perf_counter()
    print(f"building preset {args.preset} ({'checkpoint ' + args.checkpoint if args.checkpoint else f'random weights, seed {args.seed}'})", flush=True)
    comps = build_components(args.preset, checkpoint=args.checkpoint, seed=args.seed)
    for record in fuse_loras(comps.transformer, loras):  # in place: --check compares with it
        print(f"fused LoRA {record['file']} ({record['layout']} layout, scale {record['scale']}, "
              f"{record['layers']} layers)", flush=True)
    manifest = export_preset(comps, out, precision=args.precision)
    print(f"wrote {out} ({', '.join(manifest['graphs'])}, tokenizer, manifest.json) "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)
    if not args.check:
        return 0
    return _check(comps, out, args)


def _check(comps, out, args, gates=None) -> int:
    """Exit status of `export --check`: 1 if any precision checked misses its gate
    (`parity.GATES`, stated in the README; `gates` overrides them)."""
    from t2vserve.export.onnx_export import export_preset
    from t2vserve.export.parity import GATES, check_components, check_pipeline, misses
    from t2vserve.schema import GenerationRequest

    request = GenerationRequest(prompt=args.check_prompt, seed=args.seed, steps=args.check_steps,
                                **_preset_size(comps.preset))
    results = {}
    precisions = ["fp32", "fp16"] if args.precision == "fp32" else [args.precision]
    for precision in precisions:
        target = out if precision == args.precision else f"{out}-{precision}"
        if target != out:
            print(f"exporting {precision} graphs to {target} for the comparison", flush=True)
            export_preset(comps, target, precision=precision)
        print(f"checking {precision}: ONNX Runtime vs torch (FP32 reference)", flush=True)
        results[precision] = {"components": check_components(comps, target),
                              "pipeline": check_pipeline(comps, target, request)}
    print(f"\n{'component':<14}{'precision':<11}{'max_abs':>12}{'relative':>12}")
    for precision, r in results.items():
        for name, e in r["components"].items():
            print(f"{name:<14}{precision:<11}{e['max_abs']:>12.3e}{e['rel']:>12.3e}")
    print(f"\nwhole pipeline, seed {args.seed}, {request.steps} steps, "
          f"{request.width}x{request.height}x{request.num_frames}:")
    for precision, r in results.items():
        p = r["pipeline"]
        print(f"  {precision}: PSNR {p['psnr_db']:.2f} dB vs torch frames "
              f"(max |diff| {p['max_abs_uint8']} of 255)")
    if args.report:
        with open(args.report, "w") as f:
            json.dump(results, f, indent=2)
    status = 0
    for precision, r in results.items():
        missed = misses(r, (gates or GATES)[precision])
        if missed:
            print(f"FAILED {precision}: {'; '.join(missed)}", file=sys.stderr)
            status = 1
    return status


def _run(args) -> int:
    from pathlib import Path

    from t2vserve.media import encode_mp4
    from t2vserve.pipeline import Pipeline
    from t2vserve.schema import GenerationRequest
    from t2vserve.text_corpus import BRIEF_PROMPTS

    pipe = Pipeline.from_artifacts(args.artifacts, scheduler=args.scheduler)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = args.prompt or BRIEF_PROMPTS
    defaults = pipe.preset.defaults
    for i, prompt in enumerate(prompts):
        request = GenerationRequest(
            prompt=prompt,
            **{k: getattr(args, k) if getattr(args, k) is not None else defaults[k]
               for k in ("width", "height", "num_frames", "fps", "steps", "guidance_scale")},
            seed=args.seed,
        ).validate()
        t0 = time.perf_counter()
        frames = pipe.generate(request, callback=lambda s, t, _: print(
            f"\r  step {s + 1}/{request.steps}", end="", flush=True))
        path = out_dir / f"clip_{i:02d}_seed{request.seed}.mp4"
        path.write_bytes(encode_mp4(frames, request.fps))
        print(f"\r{path}: {frames.shape[0]} frames {request.width}x{request.height} "
              f"@{request.fps} fps in {time.perf_counter() - t0:.1f} s  <- {prompt!r}", flush=True)
    return 0


def _ensure_artifacts(profile, *, tensorrt: bool = False) -> None:
    """Export the profile's preset (at the DiT's precision) unless its artifacts exist; with
    `tensorrt`, also the FP32 graphs the TensorRT build parses when the artifacts are not FP32
    (`build_input_dir`; rewritten when their weights differ from the artifacts')."""
    from t2vserve.export.onnx_export import export_preset
    from t2vserve.presets import build_components

    model = profile.data["model"]
    comps = []

    def export(out, precision):
        print(f"{out} is missing: exporting preset {model['preset']} ({precision})", flush=True)
        comps[:] = comps or [build_components(
            model["preset"], checkpoint=profile.resolve(model.get("checkpoint")))]
        export_preset(comps[0], out, precision=precision)

    def weight_hash(folder):
        return json.loads((folder / "manifest.json").read_text()).get("weight_hash")

    if not (profile.artifacts / "manifest.json").exists():
        export(profile.artifacts, profile.data["components"]["dit"]["precision"])
    from t2vserve.export.variants import ensure_calibrations, ensure_variants

    ensure_variants(profile)  # each LoRA variant's own DiT (t2vserve/sampling.py)
    ensure_calibrations(profile)  # each step-cache variant's curve, for its DiT's weights
    if tensorrt:
        from t2vserve.export.tensorrt_engine import build_input_dir

        out = build_input_dir(profile.artifacts)
        if out != profile.artifacts and not ((out / "manifest.json").exists()
                                             and weight_hash(out) == weight_hash(profile.artifacts)):
            export(out, "fp32")


def _calibrate_cache(args) -> int:
    from t2vserve.export.calibrate import calibrate_cache
    from t2vserve.profile import load_profile

    profile = load_profile(args.profile)
    _ensure_artifacts(profile)
    calibrate_cache(profile, args.variant, prompts=args.prompts, steps=args.steps)
    return 0


def _repo_build(args) -> int:
    from t2vserve.profile import load_profile
    from t2vserve.serve.repository import render_repository

    profile = load_profile(args.profile)
    _ensure_artifacts(profile)
    out = render_repository(profile, args.out)
    print(f"rendered {out} for profile {profile.name} (artifacts: {profile.artifacts})")
    return 0


def _serve(args) -> int:
    from pathlib import Path

    from t2vserve.profile import load_profile
    from t2vserve.serve.repository import render_repository
    from t2vserve.serve.server import ServerConfig, check_shm
    from t2vserve.serve.supervisor import Supervisor

    profile = load_profile(args.profile)
    need = check_shm(profile)
    _ensure_artifacts(profile)
    repo = render_repository(profile, args.repo)
    overrides = {k: v for k, v in (("address", args.address), ("http_port", args.http_port),
                                   ("grpc_port", args.grpc_port),
                                   ("metrics_port", args.metrics_port),
                                   ("supervisor_port", args.supervisor_port)) if v is not None}
    cfg = ServerConfig.from_profile(profile, repo, **overrides)
    logging.getLogger("t2vserve.supervisor").setLevel(logging.INFO)
    print(f"serving profile {profile.name}: gRPC {cfg.address}:{cfg.grpc_port}, HTTP "
          f"{cfg.address}:{cfg.http_port}, Triton metrics {cfg.address}:{cfg.metrics_port}, "
          f"supervisor {cfg.address}:{cfg.supervisor_port} (/metrics, /healthz); shared memory "
          f"needed up to {need / 2**30:.1f} GiB. Ctrl-C or SIGTERM drains and stops.", flush=True)
    return Supervisor(profile, cfg, Path(args.log) if args.log else None).run()


def _demo(args) -> int:
    from pathlib import Path

    from t2vserve.client import T2VClient
    from t2vserve.profile import load_profile
    from t2vserve.serve.repository import render_repository
    from t2vserve.serve.server import ServerConfig, start, stop, wait_ready
    from t2vserve.media import decode_mp4
    from t2vserve.text_corpus import DEMO_PROMPTS
    from t2vserve.train.measures import contact_sheet

    profile = load_profile(args.profile)
    _ensure_artifacts(profile)
    repo = render_repository(profile, args.repo)
    cfg = ServerConfig.from_profile(profile, repo)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "tritonserver.log"
    print(f"starting tritonserver (gRPC {cfg.address}:{cfg.grpc_port}, log {log}) ...", flush=True)
    proc = start(cfg, log)
    try:
        wait_ready(cfg, proc)
        client = T2VClient(f"{cfg.address}:{cfg.grpc_port}")
        prompts = [(p, None) for p in args.prompt] if args.prompt else DEMO_PROMPTS
        clips, labels = [], []
        for i, (prompt, gloss) in enumerate(prompts):
            t0 = time.perf_counter()
            video = client.generate(prompt, seed=args.seed + i)
            path = out_dir / f"demo_{i:02d}.mp4"
            path.write_bytes(video.mp4)
            clips.append(decode_mp4(video.mp4)[0])
            # the sheet's font has no CJK glyphs: non-ASCII prompts are labelled by their gloss
            shown = prompt if prompt.isascii() else f"[zh] {gloss or '(see the log for the prompt)'}"
            labels.append(f"{path.name}: {shown}")
            print(f"{path}  ({time.perf_counter() - t0:.1f} s, {len(video.mp4)} bytes, "
                  f"stages {video.info['stages_ms']})  <- {prompt}", flush=True)
        client.close()
    except Exception as exc:
        print(f"demo failed: {exc}\n--- server log tail ---\n"
              f"{log.read_bytes()[-3000:].decode('utf-8', 'replace')}", file=sys.stderr)
        return 1
    finally:
        stop(proc)
    contact_sheet(clips, labels, out_dir / "contact_sheet.png")
    print(f"wrote the demo clips and contact_sheet.png (4 frames of each) to {out_dir}/")
    return 0


def _gpu_check(args) -> int:
    from t2vserve.perf.gpu_check import run_check
    from t2vserve.perf.gpu_check_report import markdown

    result, path = run_check(preset=args.preset, device=args.device, out_dir=args.out_dir,
                             work_dir=args.work_dir, keep=args.keep, budget_s=args.budget_s)
    print(markdown(result))
    print(f"wrote {path} (+ .md summary)")
    if result.get("error") or result["failed_phases"]:
        return 1
    return 0 if result["timing"]["within_budget"] else 1


def _preset_size(preset) -> dict:
    d = preset.defaults
    return {k: d[k] for k in ("width", "height", "num_frames", "guidance_scale")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2vserve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export a preset's networks to ONNX (+ tokenizer, manifest)")
    p.add_argument("--preset", default="tiny", help="tiny | wan2.2-ti2v-5b (default: tiny)")
    p.add_argument("--checkpoint", help="diffusers-format pipeline folder (default: random weights)")
    p.add_argument("--out", help="output folder (default: build/artifacts/<preset>[-fp16])")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                   help="fp16 keeps FP32 islands (norms, softmax, time embedding); the "
                        "text encoder always stays FP32")
    p.add_argument("--seed", type=int, default=0, help="random-weight seed and check seed")
    p.add_argument("--lora", action="append", metavar="PATH[:SCALE]",
                   help="fuse this LoRA (.safetensors, diffusers/PEFT or Wan/lightx2v keys) "
                        "into the DiT before export, at SCALE (default 1.0); repeatable, "
                        "fused in order; recorded in manifest.json")
    p.add_argument("--check", action="store_true",
                   help="compare ONNX Runtime with torch per component (FP32 and FP16) and "
                        "for the whole pipeline; exit 1 if FP32 misses its targets")
    p.add_argument("--check-prompt", default="a red cup rotating slowly on a wooden table")
    p.add_argument("--check-steps", type=int, default=8)
    p.add_argument("--report", help="also write the check's figures to this JSON file")
    p.add_argument("--format", choices=["onnx", "tensorrt"], default="onnx",
                   help="tensorrt: ONNX -> TensorRT plans for --profile (needs TensorRT and a "
                        "GPU; exports the ONNX graphs first if missing)")
    p.add_argument("--profile", help="deployment profile (--format tensorrt)")
    p.add_argument("--compare", action="store_true",
                   help="--format tensorrt: then compare each plan with ONNX Runtime "
                        "(polygraphy, per-component tolerances); exit 1 on a miss")
    p.add_argument("--compare-only", action="store_true", help="compare existing plans only")
    p.set_defaults(func=_export)

    p = sub.add_parser("run", help="generate clips in process from exported artifacts (no server)")
    p.add_argument("prompt", nargs="*", help="prompts (default: six product shots, English and Chinese, "
                   "in the trained tiny model's vocabulary)")
    p.add_argument("--artifacts", default="build/artifacts/tiny", help="what `export` wrote")
    p.add_argument("--out-dir", default="build/run", help="where the MP4s go")
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--num-frames", type=int)
    p.add_argument("--fps", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance-scale", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scheduler", choices=["unipc", "euler"], default="unipc")
    p.set_defaults(func=_run)

    p = sub.add_parser("repo", help="Triton model repository")
    repo = p.add_subparsers(dest="repo_command", required=True)
    b = repo.add_parser("build", help="render model_repository/ templates for a profile")
    b.add_argument("--profile", default="profiles/cpu-tiny.yaml")
    b.add_argument("--out", default="build/model_repository")
    b.set_defaults(func=_repo_build)

    p = sub.add_parser("serve", help="export if needed, render the repository, run tritonserver "
                                     "in the foreground")
    p.add_argument("--profile", default="profiles/cpu-tiny.yaml")
    p.add_argument("--repo", default="build/model_repository")
    p.add_argument("--address", help="bind address (default: the profile's, 127.0.0.1)")
    p.add_argument("--http-port", type=int)
    p.add_argument("--grpc-port", type=int)
    p.add_argument("--metrics-port", type=int)
    p.add_argument("--supervisor-port", type=int, help="supervisor /metrics and /healthz")
    p.add_argument("--log", help="append tritonserver's output to this file (default: stdout)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("demo", help="start the server, generate the example product clips "
                                    "through the gRPC client, stop the server")
    p.add_argument("prompt", nargs="*", help="prompts (default: six product shots, English and Chinese, "
                   "in the trained tiny model's vocabulary)")
    p.add_argument("--profile", default="profiles/cpu-tiny.yaml")
    p.add_argument("--repo", default="build/model_repository")
    p.add_argument("--out-dir", default="build/demo")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_demo)

    p = sub.add_parser("calibrate-cache", help="measure a variant's step-cache curve (mean "
                                               "prediction magnitude per timestep) into its "
                                               "artifacts; a profile's variants.<v>.cache "
                                               "needs it")
    p.add_argument("--profile", default="profiles/cpu-tiny.yaml")
    p.add_argument("--variant", help="which variant's DiT (default: the profile's first)")
    p.add_argument("--prompts", type=int, default=8, help="calibration prompts (default 8)")
    p.add_argument("--steps", type=int, help="steps (default: the most the limits admit)")
    p.set_defaults(func=_calibrate_cache)

    p = sub.add_parser("gpu-check", help="the served stack on one GPU in one command: DiT MFU, "
                                         "gRPC requests, perf_analyzer c1/c2, memory and "
                                         "host<->device bytes per stage; writes "
                                         "<out-dir>/gpu-<device>-<date>.json and .md")
    p.add_argument("--preset", default="wan2.2-ti2v-5b", choices=["wan2.2-ti2v-5b", "tiny"],
                   help="wan2.2-ti2v-5b (random BF16 weights) or tiny (--device cpu)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:<id> or cpu (default cuda)")
    p.add_argument("--out-dir", default="perf/results")
    p.add_argument("--work-dir", help="artifacts, repository, logs (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--budget-s", type=float, default=540,
                   help="time budget; exit 1 and name the phases that ran over (default 540)")
    p.set_defaults(func=_gpu_check)

    from t2vserve.client.commands import register as register_client_commands

    register_client_commands(sub)
    from t2vserve.jobs.commands import register as register_jobs_commands

    register_jobs_commands(sub)
    from t2vserve.perf.commands import register as register_perf_commands

    register_perf_commands(sub)
    from t2vserve.perf.bench_commands import register as register_bench_commands

    register_bench_commands(sub)
    return parser


def main(argv=None) -> int:
    from t2vserve.client.core import T2VError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("t2vserve").setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        return args.func(args)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in SERVER_MODULES | JOBS_MODULES:
            raise
        extra = "jobs" if top in JOBS_MODULES else "server"
        print(f"t2vserve {args.command}: error: this command needs the {extra} install "
              f"(pip install 't2vserve[{extra}]'); module {exc.name!r} is missing",
              file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, KeyError, T2VError) as exc:
        print(f"t2vserve {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
