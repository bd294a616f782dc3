"""The serving stages as plain Python, one class or function per Triton model.

No Triton import here: `triton_models.py` adapts these to the Python backend, and the tests
run them directly.
"""

import json

import numpy as np

from t2vserve.media import QC_NAMES, encode_mp4, qc_metrics
from t2vserve.pipeline import clean_prompt, decode_frames, tokenize
from t2vserve.profile import Profile
from t2vserve.runners import OnnxRuntimeRunner, Runner, device_of, to_device
from t2vserve.sampling import CacheCurve, Variant, calibration_path, resolve_path, \
    variant_dir, variants_of
from t2vserve.schema import GenerationRequest, RequestValidationError

INT_FIELDS = ("width", "height", "num_frames", "fps", "steps")
REQUEST_INPUTS = ("prompt", "negative_prompt", *INT_FIELDS, "guidance_scale", "seed",
                  "model_variant")


def load_manifest(profile: Profile) -> dict:
    path = profile.artifacts / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `t2vserve export` for profile {profile.name}")
    return json.loads(path.read_text())


RUNTIMES = ("onnxruntime", "torch", "tensorrt")


def instance_device(args: dict) -> str:
    """The device Triton gave this model instance, from the Python backend's `initialize`
    args: "cuda:<id>" for a KIND_GPU instance (the profile's components.<c>.gpus render
    one), "cpu" otherwise."""
    if args.get("model_instance_kind") == "GPU":
        return f"cuda:{int(args['model_instance_device_id'])}"
    return "cpu"


def use_device(device: str) -> None:
    # One Triton stub process per instance: make the instance's GPU the process's current
    # one, so whatever still says plain "cuda" (TensorRT's stream, its output buffers) is it.
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ValueError(f"this instance is placed on {device} (components.<c>.gpus), but "
                             f"torch sees {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(index)


def onnxruntime_providers(device: str) -> list | None:
    """ONNX Runtime's providers for a device: the CUDA EP on the instance's GPU (CPU for the
    nodes it lacks), or None for the CPU default."""
    if not device.startswith("cuda"):
        return None
    import torch

    return [("CUDAExecutionProvider", {"device_id": torch.device(device).index or 0}),
            "CPUExecutionProvider"]


def make_runner(profile: Profile, component: str, graph: str, threads: int = 0,
                device: str = "cpu", variant: Variant | None = None) -> Runner:
    """The runner the profile asks for, for one graph of one component, on `device` (the
    instance's, `instance_device`). `variant`: a model variant with its own DiT weights (its
    LoRAs fused; `t2vserve.sampling`), for the `dit` graph."""
    spec = profile.data["components"][component]
    if "device" in spec:
        raise ValueError(f"components.{component}.device is no longer read: Triton places "
                         f"instances; say components.{component}.gpus: [0] for GPU 0")
    runtime = spec["runtime"]
    if runtime not in RUNTIMES:
        raise ValueError(f"components.{component}.runtime {runtime!r} is not available in "
                         f"this build; supported: {', '.join(RUNTIMES)}")
    use_device(device)
    folder = variant_dir(profile, variant) if variant is not None else profile.artifacts
    if runtime == "onnxruntime":
        path = folder / f"{graph}.onnx"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `t2vserve repo build --profile "
                                    f"{profile.path}` (it exports what is missing)")
        return OnnxRuntimeRunner(path, providers=onnxruntime_providers(device),
                                 intra_op_threads=threads)
    if runtime == "torch":
        return _torch_runners(profile, component, threads, device, variant)[graph]
    if variant is not None and variant.loras:
        raise ValueError(f"variants.{variant.name}: runtime tensorrt serves the base DiT only "
                         f"(build its plan from {folder / 'dit.onnx'} by hand, or use runtime "
                         f"onnxruntime or torch for LoRA variants)")
    # tensorrt: plans from `t2vserve export --format tensorrt --profile P`; input/output
    # names are read from the plan, so they match the ONNX graph it was built from
    from t2vserve.export.tensorrt_engine import ArtifactPaths
    from t2vserve.runners.tensorrt import TensorRTRunner

    plan = ArtifactPaths.for_profile(profile).plan(graph)
    if not plan.exists():
        raise FileNotFoundError(f"{plan} not found: run `t2vserve export --format tensorrt "
                                f"--profile {profile.path}`")
    # deserialised on the current device (use_device)
    return TensorRTRunner(plan, device=device if device.startswith("cuda") else "cuda")


_TORCH = {}
# the preset network each component is (presets.build_component)
NETWORK = {"text_encoder": "text_encoder", "dit": "transformer", "vae_decoder": "vae"}


def _torch_runners(profile: Profile, component: str, threads: int = 0,
                   device: str = "cpu", variant: Variant | None = None) -> dict:
    """Eager torch over the export wrappers (the same forward the graphs were exported from),
    for one component's graphs: the process builds its own network and no other, in the
    component's precision on its device (FP32 on CPU, as the exported graphs); a variant's
    LoRAs are fused into it (`export.lora.fuse_loras`)."""
    loras = variant.loras if variant is not None else ()
    key = (str(profile.path), component, device, loras)
    if key not in _TORCH:
        import torch

        from t2vserve.presets import build_component
        from t2vserve.runners.torch_cuda import DTYPES

        if threads:
            torch.set_num_threads(threads)
        precision = profile.data["components"][component].get("precision", "bf16")
        if precision not in DTYPES:
            raise ValueError(f"components.{component}.precision must be one of "
                             f"{list(DTYPES)}, got {precision!r}")
        dtype = torch.float32 if device == "cpu" else DTYPES[precision]
        model = profile.data["model"]
        module = build_component(model["preset"], NETWORK[component], device=device,
                                 dtype=dtype, checkpoint=profile.resolve(model.get("checkpoint")))
        if loras:
            from t2vserve.export.lora import fuse_loras

            fuse_loras(module, lora_specs(profile, variant))
        _TORCH[key] = {g: _on_device(profile, g, r, device)
                       for g, r in torch_graph_runners(component, module).items()}
    return _TORCH[key]


def torch_graph_runners(component: str, module) -> dict:
    """graph name -> TorchRunner over its export wrapper, for one component's network."""
    from t2vserve.export.vae_chunked import VaeDecodeFirst, VaeDecodeStep
    from t2vserve.export.wrappers import DiTExport, TextEncoderExport
    from t2vserve.runners import TorchRunner

    if component == "text_encoder":
        return {"text_encoder": TorchRunner(TextEncoderExport(module),
                                            ["input_ids", "attention_mask"], ["prompt_embeds"])}
    if component == "dit":
        return {"dit": TorchRunner(DiTExport(module), ["latents", "timestep", "prompt_embeds"],
                                   ["noise_pred"])}
    first, step = VaeDecodeFirst(module), VaeDecodeStep(module)
    caches = [f"cache_{i}" for i in range(first.num_caches)]
    outputs = ["frames"] + [c + "_out" for c in caches]
    return {"vae_decode_first": TorchRunner(first, ["latents"], outputs),
            "vae_decode_step": TorchRunner(step, ["latents"] + caches, outputs)}


_COMPONENT = {"text_encoder": "text_encoder", "dit": "dit", "vae_decode_first": "vae_decoder",
              "vae_decode_step": "vae_decoder"}


def _on_device(profile: Profile, graph: str, runner, device: str = "cpu"):
    """A CUDA device -> the same wrapper on that GPU in the component's precision
    (bf16/fp16/fp32), SDPA attention, optional torch.compile and CUDA graphs per shape;
    `kernels: triton` on either device swaps in the fused kernels (`runners.fused`)."""
    spec = profile.data["components"][_COMPONENT[graph]]
    kernels = spec.get("kernels", "off")
    if device == "cpu":
        if kernels == "triton":
            from t2vserve.runners.fused import check_device, use_kernels

            check_device(device)  # the interpreter only: tests
            use_kernels(runner.module)
        return runner
    from t2vserve.runners.torch_cuda import CudaTorchRunner, use_sdpa_attention

    if graph == "dit":
        # the export processor materialises L x L scores in half precision: 143 GB at 720p
        use_sdpa_attention(runner.module.transformer)
    return CudaTorchRunner(runner.module, runner.input_names, runner.output_names,
                           device=device, dtype=spec.get("precision", "bf16"),
                           compile=bool(spec.get("compile", False)),
                           cuda_graphs=bool(spec.get("cuda_graphs", False)), kernels=kernels)


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


def lora_specs(profile: Profile, variant: Variant) -> list:
    """A variant's `lora:` entries ("PATH[:SCALE]", PATH may be `asset:...`) as LoraSpecs."""
    from t2vserve.export.lora import LoraSpec

    specs = []
    for entry in map(str, variant.loras):
        path, _, scale = entry.rpartition(":")
        try:
            value = float(scale) if path else 1.0
        except ValueError:  # the colon was the path's own (asset:...)
            path, value = entry, 1.0
        specs.append(LoraSpec(resolve_path(profile, path or entry), value))
    return specs


def variant_manifest(profile: Profile, variant: Variant) -> dict:
    """The manifest of the weights a variant serves: its own DiT export's (`weight_hash` of
    the fused DiT) or the base artifacts'."""
    path = variant_dir(profile, variant) / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `t2vserve repo build --profile "
                                f"{profile.path}` (it exports each variant's DiT)")
    return json.loads(path.read_text())


def load_variants(profile: Profile) -> dict[str, tuple[Variant, str]]:
    """name -> (variant with its cache calibration attached, model id), the default first.
    A step cache's calibration must be for that variant's weights, else this refuses."""
    from dataclasses import replace

    out = {}
    for name, variant in variants_of(profile).items():
        manifest = variant_manifest(profile, variant)
        cache = variant.sampling.cache
        if cache is not None:
            curve = CacheCurve.load(calibration_path(profile, variant), manifest["weight_hash"])
            variant = replace(variant, sampling=replace(variant.sampling,
                                                        cache=replace(cache, curve=curve)))
        out[name] = (variant, model_id(manifest, profile, name))
    return out


def pick_variant(values: dict, variants: dict):
    """The request's `model_variant` (absent: the profile's first)."""
    name = _text(values, "model_variant")
    if name is None or name == "":
        return next(iter(variants.values()))
    if name not in variants:
        raise RequestValidationError(f"model_variant must be one of {', '.join(variants)}, "
                                     f"got {name!r:.80}")
    return variants[name]


def parse_request(values: dict, profile: Profile, tokenizer=None,
                  variant: Variant | None = None) -> GenerationRequest:
    """Triton input arrays (absent ones None) -> a validated request, defaults from the
    profile; a few-step `variant` fixes the steps and guidance (refusing others, naming
    them). Raises RequestValidationError naming the allowed range."""
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
    if variant is not None:
        steps = _scalar(values, "steps")
        fields["steps"], fields["guidance_scale"] = variant.request_steps_guidance(
            None if steps is None else int(steps), None if g is None else float(g),
            profile.defaults)
    request = GenerationRequest(**fields).validate(profile.limits)
    if tokenizer is not None:
        for name in ("prompt", "negative_prompt"):
            count = len(tokenizer(clean_prompt(getattr(request, name))).input_ids)
            request.check_tokens(name, count, profile.limits)
    return request


class TextStage:
    """Prompt pairs -> (N, 2, L, D) embeddings [conditional, unconditional], on the text
    encoder's device."""

    def __init__(self, profile: Profile, threads: int = 0, device: str = "cpu"):
        from t2vserve.tokenizer import load_tokenizer

        # pad to the preset's context, as the reference pipeline does (same embeddings)
        self.text_len = load_manifest(profile)["text_len"]
        self.tokenizer = load_tokenizer(profile.artifacts / "tokenizer")
        self.runner = make_runner(profile, "text_encoder", "text_encoder", threads, device)

    def encode(self, pairs: list[tuple[str, str]]):
        texts = [t for pair in pairs for t in pair]
        tokens = tokenize(self.tokenizer, texts, self.text_len)  # the edge: the request's text
        device = device_of(self.runner)
        embeds = self.runner.run({k: to_device(v, device) for k, v in tokens.items()})
        embeds = embeds["prompt_embeds"]
        return embeds.reshape(len(pairs), 2, *embeds.shape[1:])


class VaeStage:
    """Normalised latents (B, C, T, h, w) -> uint8 frames (B, F, H, W, 3) on the VAE's
    device."""

    def __init__(self, profile: Profile, threads: int = 0, device: str = "cpu"):
        manifest = load_manifest(profile)
        self.first = make_runner(profile, "vae_decoder", "vae_decode_first", threads, device)
        self.step = make_runner(profile, "vae_decoder", "vae_decode_step", threads, device)
        self.mean = np.asarray(manifest["latents_mean"], np.float32)
        self.std = np.asarray(manifest["latents_std"], np.float32)

    def decode(self, latents):
        # The one decode loop (pipeline.decode_frames): caches stay on the runners' device;
        # the uint8 frames leave it once, into the frame store (frames.put).
        return decode_frames(self.first, self.step, latents, self.mean, self.std)

    def decode_to_store(self, latents, folder=None) -> list[str]:
        """What vae_decoder serves: decode, then each clip's uint8 frames into the frame
        store, the one device -> host copy (`frames.put`); returns their handles. A failure
        leaves no file behind."""
        from t2vserve.serve import frames

        handles = []
        try:
            for clip in self.decode(latents):
                handles.append(frames.put(clip, folder))
        except BaseException:
            for handle in handles:
                frames.discard(handle, folder)
            raise
        return handles


def model_id(manifest: dict, profile: Profile | None = None, variant: str = "base") -> str:
    """`preset@weights`, and `/variant` when the profile lists variants: two variants may
    share weights and differ in how they sample, and an A/B test must tell them apart."""
    weights = f"{manifest['preset']}@{manifest['weight_hash'][:12]}"
    return f"{weights}/{variant}" if profile is not None and profile.data.get("variants") \
        else weights


def encode_video(frames: np.ndarray, fps: int) -> tuple[bytes, np.ndarray]:
    """uint8 (F, H, W, 3) -> (MP4 bytes, QC metrics)."""
    return encode_mp4(frames, fps), qc_metrics(frames)


def response_info(model: str, request: GenerationRequest, qc, **fields) -> bytes:
    """The `info` output t2v answers with: the model that served, the request as served,
    the QC metrics by name, and `fields` (stages_ms, cache_hit, dit_calls)."""
    info = dict(fields)
    info["model"] = model
    info["request"] = {k: getattr(request, k) for k in ("width", "height", "num_frames", "fps",
                                                        "steps", "guidance_scale", "seed")}
    info["qc"] = dict(zip(QC_NAMES, (round(float(x), 4) for x in qc)))
    return json.dumps(info, ensure_ascii=False).encode("utf-8")
