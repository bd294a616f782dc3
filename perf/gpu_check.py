"""`t2vserve gpu-check`: the served stack on one GPU, measured in one command (at most 9
minutes on an H100/H200, no network).

Phases, in order: the DiT forward's MFU (perf.bench_gpu's own code, before the server so
its network does not share the GPU with the stages); the fused Triton kernels' GB/s at 720P
(perf.bench_kernels, skipped without CUDA); a generated torch-runtime profile and
repository; tritonserver with the transfer hook on (serve.transfers); one gRPC request per
planned size with host<->device bytes measured per stage; perf_analyzer at concurrency 1
and 2 (perf.analyzer); memory per stage process. `--preset tiny --device cpu` runs the same
phases on a CPU at tiny sizes, which is how the test suite keeps this script working.
Writes <out-dir>/gpu-<device-slug>-<date>.json and .md (perf.gpu_check_report).
"""

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from t2vserve.perf.gpu_check_report import write_result
from t2vserve.perf.stage_memory import memory_by_stage, stage_processes
from t2vserve.serve.server import free_ports

# What each preset's check serves and asks for. requests: (width, height, frames, steps);
# the first size is also perf_analyzer's (the profile's defaults).
PLANS: dict[str, dict[str, Any]] = {
    "wan2.2-ti2v-5b": dict(
        requests=[(832, 480, 17, 4), (1280, 704, 121, 2)],
        sizes=[[832, 480], [480, 832], [1280, 704], [704, 1280]],
        width=(480, 1280), height=(480, 1280), num_frames=(17, 121), prompt_tokens=512,
        gpu_precision="bf16"),
    "tiny": dict(
        requests=[(128, 128, 17, 4), (192, 128, 33, 2)],
        sizes=[[128, 128], [192, 128]],
        width=(128, 192), height=(128, 128), num_frames=(17, 33), prompt_tokens=256,
        gpu_precision="bf16"),
}
# seconds each phase may take on the GPU run; their sum is the 9-minute budget
PHASE_BUDGET_S = {"setup": 20, "mfu": 75, "kernels": 25, "artifacts": 15, "server_load": 150,
                  "requests": 120, "perf_analyzer": 90, "memory_and_stop": 45}
TOTAL_BUDGET_S = 540
CONCURRENCY = (1, 2)
WARMUP_PROMPT = "a green glass bottle on a grey background"  # not a measured one: no cache hit
PROMPTS = ("a red ceramic mug rotating slowly on a wooden table, studio light",
           "白色运动鞋在纯色背景上缓慢旋转，柔和灯光")


def log(msg: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Phase:
    name: str
    seconds: float
    budget_s: float | None
    ok: bool
    error: str | None = None


class Phases:
    """Times each phase against its share of the budget; a failed phase is recorded and the
    check goes on where later phases do not depend on it."""

    def __init__(self, budgets: dict):
        self.budgets = budgets
        self.done: list[Phase] = []

    @contextlib.contextmanager
    def run(self, name: str, fatal: bool = True):
        """Time one phase; a failure stops the check unless `fatal` is False."""
        log(f"{name} ...")
        t0 = time.perf_counter()
        phase = Phase(name, 0.0, self.budgets.get(name), True)
        try:
            yield phase
        except Exception as exc:
            phase.ok, phase.error = False, f"{type(exc).__name__}: {exc}"
            if fatal:
                raise
        finally:
            phase.seconds = round(time.perf_counter() - t0, 1)
            self.done.append(phase)
            log(f"{name}: {'done' if phase.ok else 'FAILED'} in {phase.seconds:.1f} s"
                + (f" ({phase.error})" if phase.error else ""))

    def over(self) -> list[str]:
        return [f"{p.name} took {p.seconds:.0f} s of its {p.budget_s:.0f} s"
                for p in self.done if p.budget_s is not None and p.seconds > p.budget_s]


def versions() -> dict:
    from importlib import metadata

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for dist in ("torch", "diffusers", "transformers", "numpy", "av", "nvidia-pytriton",
                 "tritonclient", "onnxruntime", "tensorrt"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    import torch

    out["cuda"] = torch.version.cuda
    return out


def tensorrt_status(device: str) -> dict:
    """TensorRT is used only where it imports; the 5B plans are not built inside the budget."""
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or a stub package that fails on import
        return {"used": False, "skipped": f"`import tensorrt` fails here ({type(exc).__name__}: "
                                          f"{exc}); the stages run on runtime torch"}
    if device == "cpu":
        return {"used": False, "skipped": "TensorRT needs a CUDA device"}
    return {"used": False, "skipped": "TensorRT imports, but building the plans (ONNX export of "
                                      "the 5B, then `t2vserve export --format tensorrt`) takes "
                                      "longer than this check's 9 minutes: build them once, "
                                      "then `t2vserve perf run` against a tensorrt profile"}


# ---- phase: DiT MFU (bench_gpu's code) -------------------------------------------------

def measure_mfu(preset: str, device: str, dtype: str) -> dict:
    import torch

    from t2vserve.perf import bench_gpu

    p = bench_gpu.get_preset(preset)
    dev = torch.device(device)
    shapes = [tuple(s) for s in bench_gpu.SHAPES[preset]]
    bench_gpu._check_fits(p, dev, bench_gpu.DTYPES[dtype], shapes)
    peak = bench_gpu.matmul_peak(dev, bench_gpu.DTYPES[dtype], log=log)
    peaks = {"measured": peak["tflops"]}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    sheet = bench_gpu.datasheet_peak(name) if dev.type == "cuda" else None
    if sheet and dtype != "fp32":
        peaks["datasheet"] = sheet[1].tflops
    # a CPU run only keeps the code path alive: one timed call each
    repeats = 3 if dev.type == "cuda" else 1
    rows, _ = bench_gpu._bench_dit(p, dev, dtype, shapes, peaks, repeats=repeats, warmup=1,
                                   compile=False, cuda_graphs=False, baseline=False, log=log)
    bench_gpu._free(dev)
    return {"dtype": dtype, "peak_tflops": peaks, "datasheet": sheet[0] if sheet else None,
            "dit": [{"width": r["width"], "height": r["height"], "frames": r["frames"],
                     "tokens": r["tokens"], "batch": r["batch"], "tflop": r["flops"] / 1e12,
                     "latency_ms": round(r["ours"]["latency_ms"], 2),
                     "tflops": round(r["ours"]["tflops"], 3),
                     **{k: round(v, 4) for k, v in r["ours"].items() if k.startswith("mfu_")}}
                    for r in rows]}


def measure_kernels(device: str, out_dir) -> dict | None:
    """`t2vserve bench kernels --shapes 720p --no-compile --no-end-to-end`, its files next to
    this check's; None on a CPU."""
    if device == "cpu":
        return None
    from t2vserve.perf import bench_kernels

    r = bench_kernels.run_bench(device, resolutions=("720p",), repeats=10, compile=False,
                                e2e=False, log=log)
    path = bench_kernels.write_bench(r, out_dir)
    return {"result": str(path), "copy_gbs": round(r["bandwidth"]["copy_gbs"]),
            "datasheet_gbs": r["bandwidth"]["datasheet_gbs"],
            "kernels": [{"kernel": k["kernel"], "case": k["case"],
                         "ms": round(k["triton"]["median_ms"], 4), "gbs": round(k["triton"]["gbs"]),
                         "of_copy": round(k["triton"]["of_copy"], 3),
                         "torch_ms": round(k["torch"]["median_ms"], 4)} for k in r["kernels"]],
            "targets_met": sum(t["met"] for t in r["targets"]), "targets": len(r["targets"])}


# ---- phase: artifacts, profile, repository ----------------------------------------------

def write_artifacts(preset_name: str, folder: Path) -> dict:
    """What a torch-runtime deployment reads from its artifacts folder: manifest.json and the
    tokenizer. No ONNX graphs: the stages build their networks (presets.build_component)."""
    from t2vserve.presets import TINY_WEIGHTS, get_preset, trained_tiny_available
    from t2vserve.tokenizer import load_tokenizer

    preset = get_preset(preset_name)
    folder.mkdir(parents=True, exist_ok=True)
    load_tokenizer().save_pretrained(str(folder / "tokenizer"))
    vae = dict(preset.vae)
    trained = preset.name == "tiny" and trained_tiny_available()
    if trained:  # the trained VAE's latent statistics, as build_component uses them
        vae.update(json.loads((TINY_WEIGHTS / "latents.json").read_text()))
    weights = "trained tiny weights" if trained else "random weights, seed 0"
    manifest = {
        "preset": preset.name, "runtime": "torch", "weights": weights,
        "weight_hash": hashlib.sha256(f"{preset.name}: {weights}".encode()).hexdigest(),
        "text_len": preset.text_len, "latent_channels": preset.latent_channels,
        "vae_stride": [vae["scale_factor_temporal"], vae["scale_factor_spatial"],
                       vae["scale_factor_spatial"]],
        "latents_mean": list(vae["latents_mean"]), "latents_std": list(vae["latents_std"]),
        # what rendering reads of the text encoder's output
        "graphs": {"text_encoder": {"outputs": [{"name": "prompt_embeds", "dtype": "FP32",
                                                 "shape": ["batch", "text_len",
                                                           preset.text_encoder["d_model"]]}]}},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def profile_data(preset: str, device: str, artifacts: Path, ports: list[int]) -> dict:
    """A deployment profile for the check: runtime torch for every network, on the device's
    GPU (KIND_GPU instances; "cuda" is GPU 0) or CPU; limits admit exactly the planned sizes."""
    import t2vserve.profiles

    plan = PLANS[preset]
    data = yaml.safe_load((Path(t2vserve.profiles.__file__).parent / "cpu-tiny.yaml").read_text())
    data.pop("variants", None)  # cpu-tiny's variants (a tiny LoRA student) are not this preset's
    gpu = device != "cpu"
    precision = plan["gpu_precision"] if gpu else "fp32"
    gpu_id = int(device.partition(":")[2] or 0) if gpu else None
    component = {"runtime": "torch", "precision": precision} | ({"gpus": [gpu_id]} if gpu else {})
    w, h, f, steps = plan["requests"][0]
    http, grpc, metrics, supervisor = ports
    data.update({
        "name": f"gpu-check-{preset}-{'gpu' if gpu else 'cpu'}",
        "model": {"preset": preset, "checkpoint": None, "artifacts": str(artifacts),
                  "scheduler": "unipc"},
        "components": {c: dict(component) for c in ("text_encoder", "dit", "vae_decoder")},
        "defaults": {"width": w, "height": h, "num_frames": f, "fps": 24, "steps": steps,
                     "guidance_scale": 5.0, "seed": 0},
        "models": {
            "text_encoder": {"instances": 1, "max_batch_size": 4, "max_queue_delay_us": 2000,
                             "threads": 0 if gpu else 1},
            "t2v": {"instances": max(CONCURRENCY)},
            "dit": {"instances": 1, "max_batch_size": 4, "max_queue_delay_us": 2000,
                    "threads": 0 if gpu else 1},
            "vae_decoder": {"instances": 1, "max_batch_size": 1, "max_queue_delay_us": 0,
                            "threads": 0 if gpu else 1},
            "video_encoder": {"instances": max(CONCURRENCY)},
        },
    })
    data["limits"].update({
        "width": {"min": plan["width"][0], "max": plan["width"][1], "multiple": 32},
        "height": {"min": plan["height"][0], "max": plan["height"][1], "multiple": 32},
        "sizes": plan["sizes"],
        "num_frames": {"min": plan["num_frames"][0], "max": plan["num_frames"][1]},
        "steps": {"min": 1, "max": 50}, "prompt_tokens": plan["prompt_tokens"],
    })
    data["server"].update({"address": "127.0.0.1", "http_port": http, "grpc_port": grpc,
                           "metrics_port": metrics, "supervisor_port": supervisor,
                           "exit_timeout_s": 60, "shm_bytes": None})
    return data


# ---- phase: requests with transfers measured -------------------------------------------

def measured_request(client, transfer_dir: Path, prompt: str, w: int, h: int, f: int,
                     steps: int, seed: int, timeout: float | None = None) -> dict:
    from t2vserve.media import decode_mp4
    from t2vserve.serve import transfers

    for old in transfer_dir.glob("*.jsonl"):
        old.unlink()
    (transfer_dir / transfers.MARKER).touch()
    t0 = time.perf_counter()
    try:
        video = client.generate(prompt, width=w, height=h, num_frames=f, steps=steps,
                                seed=seed, guidance_scale=5.0, timeout=timeout)
    finally:
        (transfer_dir / transfers.MARKER).unlink()
    wall = time.perf_counter() - t0
    frames, fps = decode_mp4(video.mp4)
    by_model = transfers.per_model(transfers.read_records(transfer_dir))
    return {"width": w, "height": h, "num_frames": f, "steps": steps, "seed": seed,
            "wall_s": round(wall, 2), "profiled": True, "mp4_bytes": len(video.mp4),
            "decoded": {"frames": int(frames.shape[0]), "height": int(frames.shape[1]),
                        "width": int(frames.shape[2]), "fps": fps},
            "ok": (int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])) == (f, h, w),
            "stages_ms": video.info.get("stages_ms"), "dit_calls": video.info.get("dit_calls"),
            "transfer_bytes": by_model}


# ---- the check ---------------------------------------------------------------------------

def _device_name(device: str) -> str:
    if device == "cpu":
        return "cpu"
    import torch

    return torch.cuda.get_device_name(torch.device(device))


def run_check(preset: str = "wan2.2-ti2v-5b", device: str = "cuda", out_dir: str | Path =
              "perf/results", work_dir: str | Path | None = None, keep: bool = False,
              budget_s: float = TOTAL_BUDGET_S) -> tuple[dict, Path]:
    """Run every phase; returns (result, path of the JSON written)."""
    if preset not in PLANS:
        raise ValueError(f"--preset must be one of {sorted(PLANS)}, got {preset!r}")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"--device must be cpu, cuda or cuda:<id>, got {device!r}")
    import torch

    if device != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch {torch.__version__} sees no CUDA device "
                         f"(use --device cpu with --preset tiny)")
    if device == "cpu" and preset != "tiny":
        raise ValueError("--device cpu runs --preset tiny only (the 5B takes minutes per "
                         "DiT call on a CPU)")

    scale = budget_s / TOTAL_BUDGET_S
    phases = Phases({k: v * scale for k, v in PHASE_BUDGET_S.items()})
    t_start = time.perf_counter()

    def left() -> float:
        # every blocking call waits at most to the end of the budget (and 30 s at least), so
        # a hung request still leaves time to write the result
        return max(30.0, budget_s - (time.perf_counter() - t_start))
    created = dt.datetime.now(dt.timezone.utc)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="t2vserve-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"kind": "t2vserve.gpu_check", "version": 1,
                    "created": created.strftime("%Y-%m-%dT%H:%M:%SZ"), "preset": preset,
                    "requested_device": device, "skipped": {}, "phases": {}}
    plan = PLANS[preset]
    proc = None
    try:
        with phases.run("setup"):
            from t2vserve.perf.run import device_label, machine

            result["machine"] = machine()
            result["device"] = _device_name(device)
            result["device_label"] = device_label(result["machine"]) if device == "cpu" \
                else result["device"]
            result["versions"] = versions()
            result["tensorrt"] = tensorrt_status(device)
            result["skipped"]["tensorrt"] = result["tensorrt"]["skipped"]
        dtype = plan["gpu_precision"] if device != "cpu" else "fp32"
        with phases.run("mfu", fatal=False):  # serving does not depend on it
            result["phases"]["mfu"] = measure_mfu(preset, device, dtype)
        with phases.run("kernels", fatal=False):
            result["phases"]["kernels"] = measure_kernels(device, out_dir)
            if result["phases"]["kernels"] is None:
                result["skipped"]["kernels"] = "no GPU: Triton kernels are benched on CUDA only"
        with phases.run("artifacts"):
            from t2vserve.profile import load_profile
            from t2vserve.serve.repository import render_repository
            from t2vserve.serve.server import check_shm, shm_requirement

            from t2vserve.serve.server import ShmError

            manifest = write_artifacts(preset, work / "artifacts")
            path = work / "profile.yaml"
            data = profile_data(preset, device, work / "artifacts", free_ports(4))
            path.write_text(yaml.safe_dump(data, allow_unicode=True))
            profile = load_profile(path)
            try:
                check_shm(profile)
            except ShmError as exc:
                # a container's small /dev/shm: serve the first size only and say why
                w, h, f, _ = plan["requests"][0]
                if (w, h, f) == profile.limits.largest_clip():
                    raise
                plan = dict(plan, requests=plan["requests"][:1])
                data["limits"]["sizes"] = [[w, h]]
                data["limits"]["num_frames"]["max"] = f
                path.write_text(yaml.safe_dump(data, allow_unicode=True))
                profile = load_profile(path)
                check_shm(profile)
                result["skipped"]["larger_requests"] = f"/dev/shm too small for them: {exc}"
            repo = render_repository(profile, work / "model_repository")
            need, why = shm_requirement(profile)
            result["phases"]["artifacts"] = {
                "profile": profile.data, "weights": manifest["weights"],
                "shm_needed_mib": round(need / 2**20), "shm_why": why}
        with phases.run("server_load"):
            from t2vserve.serve.server import ServerConfig, start, wait_ready
            from t2vserve.serve import transfers

            transfer_dir = work / "transfers"
            transfer_dir.mkdir(exist_ok=True)
            cfg = ServerConfig.from_profile(profile, repo, exit_timeout_s=60)
            server_log = work / "tritonserver.log"
            previous = os.environ.get(transfers.ENV)
            os.environ[transfers.ENV] = str(transfer_dir)  # the stubs inherit the server's env
            try:
                proc = start(cfg, server_log)
            finally:
                if previous is None:
                    os.environ.pop(transfers.ENV)
                else:
                    os.environ[transfers.ENV] = previous
            try:
                wait_ready(cfg, proc, timeout_s=min(left(), phases.budgets["server_load"] * 2))
            except Exception as exc:
                raise RuntimeError(f"{exc}\n--- server log tail ---\n"
                                   f"{server_log.read_bytes()[-3000:].decode('utf-8', 'replace')}")
            url = f"{cfg.address}:{cfg.grpc_port}"
            result["phases"]["server_load"] = {"url": url, "stage_processes": {
                str(pid): m for pid, m in sorted(stage_processes(proc.pid).items())}}
            result["phases"]["memory_after_load"] = memory_by_stage(proc.pid, device)
        with phases.run("requests", fatal=False):  # a failed request does not stop the rest
            from t2vserve.client import T2VClient

            rows = result["phases"]["requests"] = []
            with T2VClient(url) as client:
                # unprofiled: whatever a process sets up on its first call (a CUDA context,
                # cuDNN's algorithm choice) is not what a request costs
                w, h, f, _ = plan["requests"][0]
                log(f"  warm-up request {w}x{h}x{f}, 1 step")
                client.generate(WARMUP_PROMPT, width=w, height=h, num_frames=f, steps=1, seed=1,
                                timeout=left())
                for i, (w, h, f, steps) in enumerate(plan["requests"]):
                    log(f"  request {w}x{h}x{f}, {steps} steps (transfers profiled)")
                    try:
                        row = measured_request(client, transfer_dir, PROMPTS[i % len(PROMPTS)],
                                               w, h, f, steps, seed=7 + i, timeout=left())
                    except Exception as exc:
                        row = {"width": w, "height": h, "num_frames": f, "steps": steps,
                               "ok": False, "error": f"{type(exc).__name__}: {exc}"}
                        log(f"  -> FAILED: {row['error']}")
                    else:
                        log(f"  -> {row['decoded']['frames']} frames, {row['wall_s']} s, bytes "
                            + ", ".join(f"{m}: {v['HtoD']}/{v['DtoH']} HtoD/DtoH"
                                        for m, v in sorted(row["transfer_bytes"].items())))
                    rows.append(row)
            failed = [f"{r['width']}x{r['height']}x{r['num_frames']}" for r in rows if not r["ok"]]
            if failed:
                raise RuntimeError(f"request(s) {', '.join(failed)} failed")
        with phases.run("perf_analyzer", fatal=False):
            result["phases"]["perf_analyzer"] = run_perf_analyzer(profile, url, work / "perf",
                                                                  left)
        with phases.run("memory_and_stop"):
            from t2vserve.serve.server import stop

            result["phases"]["memory_after_requests"] = memory_by_stage(proc.pid, device)
            if device == "cpu":
                result["skipped"]["gpu_memory"] = "no GPU: the check ran with --device cpu"
            stop(proc, timeout_s=30)
            proc = None
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
        log(f"stopped: {result['error']}")
    finally:
        if proc is not None:
            from t2vserve.serve.server import stop

            stop(proc, timeout_s=30)
        total = round(time.perf_counter() - t_start, 1)
        over = phases.over()
        result["failed_phases"] = {p.name: p.error for p in phases.done if not p.ok}
        result["timing"] = {"total_s": total, "budget_s": budget_s,
                            "within_budget": total <= budget_s and not over,
                            "over": over, "phases": [asdict(p) for p in phases.done]}
        if total > budget_s:
            log(f"OVER BUDGET: {total:.0f} s of {budget_s:.0f} s; "
                + ("; ".join(over) if over else "no single phase over its share"))
        result["work_dir"] = str(work) if keep else None
        if keep:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return result, write_result(result, out_dir)


def run_perf_analyzer(profile, url: str, work: Path, left=lambda: 600.0) -> dict:
    from t2vserve.perf import analyzer
    from t2vserve.perf.run import batching, model_statistics

    data = analyzer.write_input_data(profile, _mkdir(work) / "input.json", n=4)
    levels = []
    for c in CONCURRENCY:
        before = model_statistics(url)
        t0 = time.perf_counter()
        level = analyzer.measure(url, data, work, concurrency=c, requests_per_window=2,
                                 max_trials=3, timeout_s=left())
        row = asdict(level)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        row["batching"] = batching(before, model_statistics(url))
        levels.append(row)
        log(f"  c{c}: {level.throughput:.3f} videos/s, p50 {level.latency_ms['p50']:.0f} ms")
    w = analyzer.workload(profile, 1)[0]
    return {"workload": {k: w[k] for k in ("width", "height", "num_frames", "steps",
                                           "guidance_scale")},
            "requests_per_window": 2, "max_trials": 3, "levels": levels}


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p
