"""`t2vserve calibrate-cache`: the step cache's magnitude curve for one model variant's DiT.

Runs the served graphs in process (ONNX Runtime, the variant's own `dit.onnx` where it has
LoRAs) over calibration prompts from the product corpus (both languages, none of them the
evaluation prompts), at the profile's default size and guidance and the most steps the
limits admit, and records the mean log-magnitude of the guided prediction at each timestep.
The loop reads the ratio between any two timesteps off that curve (`sampling.CacheCurve`),
so one calibration serves every step count. The file names the weights it was measured on;
t2v refuses it for others.
"""

import json
import time
from pathlib import Path

import numpy as np
import torch

from t2vserve.sampling import CacheCurve, calibration_path, variants_of


def calibrate_cache(profile, variant_name: str | None = None, *, prompts: int = 8,
                    steps: int | None = None, seed: int = 0, log=print) -> Path:
    from t2vserve.pipeline import Pipeline, denoise_loop, initial_noise, latent_shape
    from t2vserve.runners import OnnxRuntimeRunner
    from t2vserve.serve.stages import variant_manifest
    from t2vserve.text_corpus import WAN_DEFAULT_NEGATIVE_PROMPT, corpus_lines

    variants = variants_of(profile)
    name = variant_name or next(iter(variants))
    if name not in variants:
        raise ValueError(f"no variant {name!r} in profile {profile.name}; it has "
                         f"{', '.join(variants)}")
    variant = variants[name]
    if variant.sampling.mode != "base":
        raise ValueError(f"variant {name!r} samples in {variant.sampling.mode} mode; the step "
                         f"cache is for base-mode variants")
    pipe = Pipeline.from_artifacts(profile.artifacts, scheduler=profile.data["model"]["scheduler"])
    manifest = variant_manifest(profile, variant)
    if variant.loras:
        pipe.dit = OnnxRuntimeRunner(calibration_path(profile, variant).parent / "dit.onnx")
    d = profile.defaults
    steps = steps or profile.limits.steps[1]
    guidance = float(d["guidance_scale"])
    # the template sentences (alternating English and Chinese), not the single words
    texts = corpus_lines(prompts, seed=seed + 1)[-2 * prompts:][:prompts]
    log(f"calibrating the step cache of variant {name!r} ({manifest['weight_hash'][:12]}): "
        f"{len(texts)} prompts x {steps} steps at {d['width']}x{d['height']}x{d['num_frames']}, "
        f"guidance {guidance:g}")
    sums: dict[float, list[float]] = {}
    shape = latent_shape(pipe.preset, d["width"], d["height"], d["num_frames"])
    t0 = time.perf_counter()
    for k, text in enumerate(texts):
        embeds = pipe.encode([text, WAN_DEFAULT_NEGATIVE_PROMPT])

        def record(i, t, pred):
            sums.setdefault(t, []).append(float(torch.log(torch.linalg.vector_norm(pred))))

        denoise_loop(pipe.dit, initial_noise(shape, seed + k), embeds, steps, guidance,
                     scheduler=pipe.scheduler, shift=pipe.preset.flow_shift,
                     on_prediction=record)
        log(f"  {k + 1}/{len(texts)} prompts, {time.perf_counter() - t0:.0f} s")
    ts = sorted(sums)
    curve = CacheCurve(tuple(ts), tuple(float(np.mean(sums[t])) for t in ts),
                       manifest["weight_hash"],
                       {"variant": name, "steps": steps, "guidance_scale": guidance,
                        "prompts": len(texts), "size": [d["width"], d["height"], d["num_frames"]],
                        "scheduler": pipe.scheduler,
                        "spread": float(np.mean([np.std(sums[t]) for t in ts]))})
    path = calibration_path(profile, variant)
    path.write_text(json.dumps(curve.to_json(), indent=2))
    log(f"wrote {path}")
    return path

