"""`t2vserve perf baseline`: the same workload through diffusers' `WanPipeline`, in process.

What a team would write without a serving stack: load the pipeline once, then generate one
request after another (torch eager, FP32 on CPU; the same components, weights, prompts,
sizes, steps, guidance and seeds as the perf_analyzer load), and encode each clip to MP4 with
the same encoder the server uses, so both sides deliver the same artifact.
"""

import json
import time

import numpy as np

from t2vserve.perf import analyzer
from t2vserve.profile import Profile
from t2vserve.text_corpus import WAN_DEFAULT_NEGATIVE_PROMPT


def _scheduler(name: str, shift: float):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if name == "unipc":  # as Wan2.2-TI2V-5B-Diffusers ships it
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       flow_shift=shift, num_train_timesteps=1000,
                                       solver_order=2, final_sigmas_type="zero")
    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=shift)
    raise ValueError(f"model.scheduler {name!r}: the baseline knows unipc, euler")


def load_pipeline(profile: Profile):
    """WanPipeline over the profile's components; refuses if they are not the served weights."""
    from diffusers import WanPipeline

    from t2vserve.export.onnx_export import weight_hash
    from t2vserve.presets import build_components

    model = profile.data["model"]
    comps = build_components(model["preset"], checkpoint=profile.resolve(model.get("checkpoint")))
    manifest_path = profile.artifacts / "manifest.json"
    if manifest_path.exists():
        served = json.loads(manifest_path.read_text())["weight_hash"]
        ours = weight_hash(comps.text_encoder, comps.transformer, comps.vae)
        if served != ours:
            raise ValueError(f"the baseline's weights ({ours[:12]}) are not the served ones "
                             f"({served[:12]} in {manifest_path}): re-export the artifacts")
    wan = WanPipeline(tokenizer=comps.tokenizer, text_encoder=comps.text_encoder,
                      transformer=comps.transformer, vae=comps.vae,
                      scheduler=_scheduler(model["scheduler"], comps.preset.flow_shift),
                      expand_timesteps=True)
    wan.set_progress_bar_config(disable=True)
    return wan, comps.preset


def _timed(generate, rows: list[dict], requests: int, warmup: int) -> dict:
    """Sequential requests; `generate(row)` returns uint8 frames, MP4 encoding is timed apart."""
    from t2vserve.media import encode_mp4

    def one(row: dict) -> tuple[float, float]:
        t0 = time.perf_counter()
        frames = generate(row)
        t1 = time.perf_counter()
        encode_mp4(frames, row["fps"])
        return t1 - t0, time.perf_counter() - t1

    for i in range(warmup):
        one(rows[i % len(rows)])
    latencies, pipeline_s, mp4_s = [], [], []
    t_start = time.perf_counter()
    for i in range(requests):
        gen, enc = one(rows[i % len(rows)])
        pipeline_s.append(gen)
        mp4_s.append(enc)
        latencies.append(gen + enc)
    wall = time.perf_counter() - t_start
    ms = np.array(latencies) * 1000
    return {
        "requests": requests, "warmup": warmup,
        "throughput": round(requests / wall, 4),
        "latency_ms": {"avg": round(float(ms.mean()), 3),
                       **{f"p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 95, 99)}},
        "latencies_ms": [round(float(x), 3) for x in ms],
        "stages_ms": {"pipeline": round(1000 * float(np.mean(pipeline_s)), 3),
                      "mp4": round(1000 * float(np.mean(mp4_s)), 3)},
    }


def run_baseline(profile: Profile, requests: int = 8, *, warmup: int = 1, log=print) -> dict:
    """diffusers' WanPipeline over the perf workload, one request after another."""
    import torch

    from t2vserve.perf.run import device_label, machine

    if requests < 1:
        raise ValueError("requests must be >= 1")
    wan, preset = load_pipeline(profile)

    def generate(row: dict) -> np.ndarray:
        frames = wan(prompt=row["prompt"], negative_prompt=WAN_DEFAULT_NEGATIVE_PROMPT,
                     width=row["width"], height=row["height"],
                     num_frames=row["num_frames"], num_inference_steps=row["steps"],
                     guidance_scale=row["guidance_scale"], output_type="np",
                     generator=torch.Generator("cpu").manual_seed(row["seed"]),
                     max_sequence_length=preset.text_len).frames[0]
        return np.round(frames * 255).astype(np.uint8)

    log(f"baseline: {requests} requests through diffusers WanPipeline, one after another ...")
    result = {"name": "diffusers WanPipeline, in process, sequential (torch eager FP32)",
              "device": device_label(machine()), "torch_threads": torch.get_num_threads(),
              **_timed(generate, analyzer.workload(profile), requests, warmup)}
    log(f"  {result['throughput']:.3f} videos/s, p50 {result['latency_ms']['p50']:.0f} ms")
    return result


def run_in_process(profile: Profile, requests: int = 8, *, warmup: int = 1, log=print) -> dict:
    """Our own pipeline over the served ONNX graphs, in process, one request after another:
    separates what the runtime buys from what serving (batching, overlap) buys."""
    from t2vserve.pipeline import Pipeline
    from t2vserve.schema import GenerationRequest

    pipe = Pipeline.from_artifacts(profile.artifacts, scheduler=profile.data["model"]["scheduler"])

    def generate(row: dict) -> np.ndarray:
        return pipe.generate(GenerationRequest(**row).validate())

    log(f"in process: {requests} requests through t2vserve's Pipeline on ONNX Runtime ...")
    result = {"name": "t2vserve Pipeline, in process, sequential (ONNX Runtime, the served graphs)",
              **_timed(generate, analyzer.workload(profile), requests, warmup)}
    log(f"  {result['throughput']:.3f} videos/s, p50 {result['latency_ms']['p50']:.0f} ms")
    return result


def compare(result: dict) -> dict:
    """Ours over the baseline: throughput at each concurrency, latency at the lowest."""
    base = result["baseline"]
    levels = [lv for lv in result["levels"] if lv.get("concurrency")]
    if not levels:
        return {}
    top = max(levels, key=lambda lv: lv["concurrency"])
    low = min(levels, key=lambda lv: lv["concurrency"])
    return {
        "throughput_ratio": {str(lv["concurrency"]): round(lv["throughput"] / base["throughput"], 3)
                             for lv in levels},
        "throughput_ratio_at_max_concurrency": round(top["throughput"] / base["throughput"], 3),
        "max_concurrency": top["concurrency"],
        "p50_latency_ratio_at_min_concurrency": round(low["latency_ms"]["p50"] / base["latency_ms"]["p50"], 3),
        "min_concurrency": low["concurrency"],
    } | ({"in_process_onnxruntime_over_baseline":
          round(result["in_process"]["throughput"] / base["throughput"], 3),
          "served_at_max_concurrency_over_in_process_onnxruntime":
          round(top["throughput"] / result["in_process"]["throughput"], 3)}
         if result.get("in_process") else {})
