"""The serving stages as plain Python, one class or function per Triton model.

No Triton import here: `triton_models.py` adapts these to the Python backend, and the tests
run them directly.
"""

import json
import time

import numpy as np

from t2vserve.media import QC_NAMES, encode_mp4, qc_metrics
from t2vserve.pipeline import clean_prompt, decode_latents, to_uint8, tokenize
from t2vserve.profile import Profile
from t2vserve.runners import OnnxRuntimeRunner, Runner
from t2vserve.schema import GenerationRequest, RequestValidationError

INT_FIELDS = ("width", "height", "num_frames", "fps", "steps")
REQUEST_INPUTS = ("prompt", "negative_prompt", *INT_FIELDS, "guidance_scale", "seed")


def load_manifest(profile: Profile) -> dict:
    path = profile.artifacts / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `t2vserve export` for profile {profile.name}")
    return json.loads(path.read_text())


RUNTIMES = ("onnxruntime", "torch", "tensorrt")


def make_runner(profile: Profile, component: str, graph: str, threads: int = 0) -> Runner:
    """The runner the profile asks for, for one graph of one component."""
    runtime = profile.data["components"][component]["runtime"]
    if runtime == "onnxruntime":
        return OnnxRuntimeRunner(profile.artifacts / f"{graph}.onnx", intra_op_threads=threads)
    if runtime == "torch":
        return _torch_runners(profile, threads)[graph]
    if runtime == "tensorrt":
        # plans from `t2vserve export --format tensorrt --profile P`; input/output names are
        # read from the plan, so they match the ONNX graph it was built from
        from t2vserve.export.tensorrt_engine import ArtifactPaths, TensorRTRunner

        plan = ArtifactPaths.for_profile(profile).plan(graph)
        if not plan.exists():
            raise FileNotFoundError(f"{plan} not found: run `t2vserve export --format tensorrt "
                                    f"--profile {profile.path}`")
        return TensorRTRunner(plan)
    raise ValueError(f"components.{component}.runtime {runtime!r} is not available in this "
                     f"build; supported: {', '.join(RUNTIMES)}")


_TORCH = {}


def _torch_runners(profile: Profile, threads: int) -> dict:
    """Eager torch over the export wrappers (the same forward the graphs were exported from)."""
    key = str(profile.path)
    if key not in _TORCH:
        import torch

        from t2vserve.pipeline import Pipeline
        from t2vserve.presets import build_components

        if threads:
            torch.set_num_threads(threads)
        model = profile.data["model"]
        comps = build_components(model["preset"], checkpoint=profile.resolve(model.get("checkpoint")))
        pipe = Pipeline.from_components(comps)
        runners = {"text_encoder": pipe.text_encoder, "dit": pipe.dit,
                   "vae_decode_first": pipe.vae_decode_first,
                   "vae_decode_step": pipe.vae_decode_step}
        _TORCH[key] = {g: _on_device(profile, g, r) for g, r in runners.items()}
    return _TORCH[key]


_COMPONENT = {"text_encoder": "text_encoder", "dit": "dit", "vae_decode_first": "vae_decoder",
              "vae_decode_step": "vae_decoder"}


def _on_device(profile: Profile, graph: str, runner):
    """components.<c>.device: cuda -> the same wrapper on the GPU in the component's precision
    (bf16/fp16/fp32), SDPA attention, optional torch.compile and CUDA graphs per shape."""
    spec = profile.data["components"][_COMPONENT[graph]]
    if spec.get("device", "cpu") == "cpu":
        return runner
    from t2vserve.torch_cuda import CudaTorchRunner, use_sdpa_attention

    if graph == "dit":
        # the export processor materialises L x L scores in half precision: 143 GB at 720p
        use_sdpa_attention(runner.module.transformer)
    return CudaTorchRunner(runner.module, runner.input_names, runner.output_names,
                           device=spec["device"], dtype=spec.get("precision", "bf16"),
                           compile=bool(spec.get("compile", False)),
                           cuda_graphs=bool(spec.get("cuda_graphs", False)))


def _scalar(values: dict, name: str):
    v = values.get(name)
    if v is None:
        return None
    v = np.asarray(v)
    if v.size != 1:
        raise RequestValidationError(f"{name} must hold exactly one value, got shape {list(v.shape)}")
    return v.reshape(-1)[0]


def _text(values: dict, name: str) -> str | None:
    v = _scalar(values, name)
    if v is None:
        return None
    if isinstance(v, str):
        return v
    try:
        return bytes(v).decode("utf-8")
    except UnicodeDecodeError:
        raise RequestValidationError(f"{name} must be valid UTF-8") from None


def parse_request(values: dict, profile: Profile, tokenizer=None) -> GenerationRequest:
    """Triton input arrays (absent ones None) -> a validated request, defaults from the
    profile. Raises RequestValidationError naming the allowed range."""
    fields = dict(profile.defaults)
    prompt = _text(values, "prompt")
    if prompt is None:
        raise RequestValidationError("prompt is required")
    fields["prompt"] = prompt
    negative = _text(values, "negative_prompt")
    if negative is not None:
        fields["negative_prompt"] = negative
    for name in INT_FIELDS + ("seed",):
        v = _scalar(values, name)
        if v is not None:
            fields[name] = int(v)
    g = _scalar(values, "guidance_scale")
    if g is not None:
        fields["guidance_scale"] = float(g)
    request = GenerationRequest(**fields).validate(profile.limits)
    if tokenizer is not None:
        for name in ("prompt", "negative_prompt"):
            count = len(tokenizer(clean_prompt(getattr(request, name))).input_ids)
            request.check_tokens(name, count, profile.limits)
    return request


class TextStage:
    """Prompt pairs -> (N, 2, L, D) embeddings [conditional, unconditional]."""

    def __init__(self, profile: Profile, threads: int = 0):
        from t2vserve.tokenizer import load_tokenizer

        # pad to the preset's context, as the reference pipeline does (same embeddings)
        self.text_len = load_manifest(profile)["text_len"]
        self.tokenizer = load_tokenizer(profile.artifacts / "tokenizer")
        self.runner = make_runner(profile, "text_encoder", "text_encoder", threads)

    def encode(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        texts = [t for pair in pairs for t in pair]
        out = self.runner.run(tokenize(self.tokenizer, texts, self.text_len))
        embeds = out["prompt_embeds"]
        return embeds.reshape(len(pairs), 2, *embeds.shape[1:])


class VaeStage:
    """Normalised latents (B, C, T, h, w) -> uint8 frames (B, F, H, W, 3)."""

    def __init__(self, profile: Profile, threads: int = 0):
        manifest = load_manifest(profile)
        self.first = make_runner(profile, "vae_decoder", "vae_decode_first", threads)
        self.step = make_runner(profile, "vae_decoder", "vae_decode_step", threads)
        self.mean = np.asarray(manifest["latents_mean"], np.float32)
        self.std = np.asarray(manifest["latents_std"], np.float32)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        # One sample per call: ONNX Runtime's convolutions round differently with the batch
        # size (measured: 3e-6), and a clip must not depend on who shared its batch.
        return np.concatenate([
            to_uint8(decode_latents(self.first, self.step, latents[i:i + 1], self.mean, self.std))
            for i in range(len(latents))])


def model_id(manifest: dict) -> str:
    return f"{manifest['preset']}@{manifest['weight_hash'][:12]}"


def finish_video(frames: np.ndarray, fps: int, info: dict) -> tuple[bytes, np.ndarray, bytes]:
    """uint8 (F, H, W, 3) -> (MP4 bytes, QC metrics, info JSON bytes)."""
    t0 = time.perf_counter()
    video = encode_mp4(frames, fps)
    qc = qc_metrics(frames)
    info = dict(info)
    info.setdefault("stages_ms", {})["video_encoder"] = round((time.perf_counter() - t0) * 1e3, 2)
    info["qc"] = dict(zip(QC_NAMES, (round(float(x), 4) for x in qc)))
    return video, qc, json.dumps(info, ensure_ascii=False).encode("utf-8")
