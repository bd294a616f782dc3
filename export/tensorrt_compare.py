"""`t2vserve export --format tensorrt --compare`: each plan against ONNX Runtime on the FP32
graph it was built from (`compare_all`), at the smallest request the profile admits
(`compare_shapes`; a CPU runs it, unlike the 27,280-token opt shape of the 720p DiT), fed with
what the server feeds (`compare_feeds`): tokenised real prompts, the text encoder graph's own
embeddings of them, de-normalised latents and the VAE caches its first-frame graph returns.

Polygraphy runs both sides; `tensorrt` and `polygraphy` are imported only when one runs.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from t2vserve.export.tensorrt_engine import ArtifactPaths, check_build_input, engine_specs
from t2vserve.runners.tensorrt import _trt
from t2vserve.export.trt_profiles import COMPONENT, limit_corners, optimisation_profiles, \
    request_shapes
from t2vserve.text_corpus import BRIEF_PROMPTS, WAN_DEFAULT_NEGATIVE_PROMPT

# (rtol, atol) for compare_with_onnxruntime, per (component, precision). An element fails only
# if it misses both. FP32 is loose for TF32 matmuls (10-bit mantissa, TensorRT's default). BF16
# keeps 8 bits of mantissa: ~0.4 % per rounding, compounded over the encoder's layers. FP16
# DiT noise predictions are O(1). VAE frames live in [-1, 1]; 2e-2 is ~2.5 uint8 levels.
TOLERANCES = {
    ("text_encoder", "fp32"): (1e-2, 1e-2), ("text_encoder", "bf16"): (5e-2, 5e-2),
    ("dit", "fp32"): (1e-2, 1e-2), ("dit", "fp16"): (2e-2, 2e-2), ("dit", "bf16"): (5e-2, 5e-2),
    ("vae_decoder", "fp32"): (1e-2, 1e-2), ("vae_decoder", "fp16"): (2e-2, 2e-2),
}
# `--compare` feeds a real CFG pair: a product prompt and the default negative prompt
COMPARE_PROMPTS = (BRIEF_PROMPTS[1], WAN_DEFAULT_NEGATIVE_PROMPT)


@dataclass
class Comparison:
    passed: bool
    max_abs: dict = field(default_factory=dict)  # output -> max |trt - ort|
    max_rel: dict = field(default_factory=dict)  # output -> max |trt - ort| / |ort|


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # polygraphy may hand back torch tensors
        x = x.detach().float().cpu() if x.is_floating_point() else x.detach().cpu()
    return np.asarray(x)


def compare_runners(runners: list, feed: dict[str, np.ndarray], rtol: float,
                    atol: float) -> Comparison:
    """Run polygraphy runners (the first is the reference) on one feed and compare."""
    from polygraphy import comparator

    # CompareFunc.simple is deprecated from polygraphy 0.53 (removed in 0.60) for this class
    simple = getattr(comparator, "SimpleCompareFunc", None) or comparator.CompareFunc.simple
    results = comparator.Comparator.run(runners, data_loader=[feed])
    accuracy = comparator.Comparator.compare_accuracy(
        results, compare_func=simple(rtol=rtol, atol=atol))
    (_, ref_iters), *others = list(results.items())
    out = Comparison(passed=bool(accuracy))
    for _, iters in others:
        for name, value in iters[0].items():
            ref = _as_numpy(ref_iters[0][name]).astype(np.float64)
            diff = np.abs(_as_numpy(value).astype(np.float64) - ref)
            out.max_abs[name] = max(out.max_abs.get(name, 0.0), float(diff.max(initial=0.0)))
            rel = diff / np.maximum(np.abs(ref), 1e-6)
            out.max_rel[name] = max(out.max_rel.get(name, 0.0), float(rel.max(initial=0.0)))
    return out


def compare_with_onnxruntime(onnx_path, plan_path, feed: dict[str, np.ndarray],
                             rtol: float, atol: float) -> Comparison:
    """The plan against ONNX Runtime (CPU) on the same inputs, through polygraphy."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromPath, TrtRunner

    _trt()  # a clear error here rather than polygraphy's on activation
    runners = [OnnxrtRunner(SessionFromOnnx(str(onnx_path), providers=["cpu"])),
               TrtRunner(EngineFromPath(str(plan_path)))]
    return compare_runners(runners, feed, rtol, atol)


def compare_shapes(profile, manifest_or_preset=None) -> dict[str, dict[str, tuple]]:
    """The shapes `--compare` runs: the smallest request the profile admits, the text encoder
    and DiT at the CFG batch of 2 (each clamped into the engine's batch range). Small enough
    for ONNX Runtime on a CPU, unlike the DiT's opt shape (27,280 tokens at 720p)."""
    w, h, f = min(limit_corners(profile), key=lambda c: c[0] * c[1] * c[2])
    shapes = request_shapes(profile, w, h, f, manifest_or_preset)
    spans = optimisation_profiles(profile, manifest_or_preset)
    for graph, inputs in shapes.items():
        lo, _, hi = next(iter(spans[graph].values()))
        batch = min(max(2 if graph in ("text_encoder", "dit") else 1, lo[0]), hi[0])
        shapes[graph] = {n: (batch, *s[1:]) for n, s in inputs.items()}
    return shapes


def compare_feeds(onnx_dir: str | Path, shapes: dict, prompts=COMPARE_PROMPTS,
                  seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Inputs as the server makes them, per graph: the prompts tokenised by the export's
    tokenizer; for the DiT, the text encoder graph's embeddings of them (ONNX Runtime, FP32),
    N(0,1) latents and real timesteps; for the VAE, de-normalised latents, and for its step
    graph the caches its first-frame graph returns."""
    import onnxruntime as ort

    from t2vserve.pipeline import tokenize
    from t2vserve.tokenizer import load_tokenizer

    onnx_dir = Path(onnx_dir)
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    tokenizer = load_tokenizer(onnx_dir / "tokenizer")
    rng = np.random.default_rng(seed)

    def session(graph):
        return ort.InferenceSession(str(onnx_dir / f"{graph}.onnx"),
                                    providers=["CPUExecutionProvider"])

    def tokens(batch, text_len):
        return tokenize(tokenizer, [prompts[i % len(prompts)] for i in range(batch)], text_len)

    encoder = session("text_encoder")
    feeds = {"text_encoder": tokens(*shapes["text_encoder"]["input_ids"])}
    batch, text_len, _ = shapes["dit"]["prompt_embeds"]
    embeds = encoder.run(["prompt_embeds"], tokens(batch, text_len))[0]
    del encoder
    feeds["dit"] = {"latents": rng.standard_normal(shapes["dit"]["latents"]).astype(np.float32),
                    "timestep": rng.uniform(1.0, 999.0, (batch,)).astype(np.float32),
                    "prompt_embeds": embeds}

    def latents(shape):  # WanPipeline's de-normalisation: x * std + mean, per channel
        mean, std = (np.asarray(manifest[k], np.float32).reshape(1, -1, 1, 1, 1)
                     for k in ("latents_mean", "latents_std"))
        return (rng.standard_normal(shape).astype(np.float32) * std + mean).astype(np.float32)

    feeds["vae_decode_first"] = {"latents": latents(shapes["vae_decode_first"]["latents"])}
    first = session("vae_decode_first")
    outs = first.run(None, feeds["vae_decode_first"])
    caches = {o.name.removesuffix("_out"): v for o, v in zip(first.get_outputs(), outs)
              if o.name != "frames"}
    feeds["vae_decode_step"] = {"latents": latents(shapes["vae_decode_step"]["latents"]),
                                **{n: caches[n] for n in shapes["vae_decode_step"]
                                   if n != "latents"}}
    return feeds


def compare_all(profile, *, log=print, prompts=COMPARE_PROMPTS) -> dict[str, Comparison]:
    """Every built plan of the profile against ONNX Runtime on the FP32 graph it was built
    from, with TOLERANCES, at compare_shapes on compare_feeds (one command:
    `t2vserve export --format tensorrt --profile P --compare`)."""
    paths = ArtifactPaths.for_profile(profile)
    manifest = check_build_input(paths.onnx_dir)
    shapes = compare_shapes(profile, manifest)
    feeds = compare_feeds(paths.onnx_dir, shapes, prompts)
    out = {}
    for spec in engine_specs(profile, manifest, paths):
        rtol, atol = TOLERANCES[(COMPONENT[spec.graph], spec.precision)]
        result = compare_with_onnxruntime(spec.onnx_path, spec.plan_path, feeds[spec.graph],
                                          rtol, atol)
        out[spec.graph] = result
        where = ", ".join(f"{n} {list(v.shape)}" for n, v in feeds[spec.graph].items()
                          if not n.startswith("cache_"))
        log(f"  {spec.graph:<18}{spec.precision:<6} rtol {rtol:g} atol {atol:g} at {where}: "
            f"{'PASS' if result.passed else 'FAIL'}  max_abs "
            + ", ".join(f"{k} {v:.3e}" for k, v in result.max_abs.items()))
    return out
