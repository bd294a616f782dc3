"""Triton Python-backend models: thin adapters from Triton tensors to `stages`.

`model_repository/<name>/1/model.py` imports one class from here as TritonPythonModel.
Every model reads its deployment profile from the `profile` parameter of its config.

Numeric tensors between the models travel by DLPack (`pb_utils.Tensor.to_dlpack` /
`from_dlpack`) as torch tensors on whatever device their producer left them: on a GPU
profile the DiT's inputs and outputs stay GPU memory from t2v's loop to dit and back (a BLS
response comes in the memory its producer wrote, with no preference set), and the models
placed on a GPU take GPU inputs as they are (FORCE_CPU_ONLY_INPUT_TENSORS "no"). On a CPU
profile the same code passes CPU tensors. Strings (prompts, JSON) are numpy object arrays.
A clip's frames do not travel as a tensor at all: vae_decoder writes them to the frame store
and video_encoder maps them from there (`frames`).
"""

import json
import time
import uuid

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from t2vserve.pipeline import denoise_loop, initial_noise, latent_shape
from t2vserve.presets import get_preset
from t2vserve.profile import load_profile
from t2vserve.runners import device_of, to_device
from t2vserve.sampling import variants_of
from t2vserve.schema import RequestValidationError
from t2vserve.serve import frames, stages, transfers
from t2vserve.serve.triton_io import (
    STAGE_RETRY_S, RequestCancelled, batched, bls, bytes_array, error_response, input_array,
    input_tensor, string_of, to_triton,
)


def _setup(args):
    config = json.loads(args["model_config"])
    profile = load_profile(config["parameters"]["profile"]["string_value"])
    # a variant's DiT model (dit_<variant>) takes dit's settings, t2v_stream t2v's
    name = "dit" if config["name"].startswith("dit_") else config["name"]
    name = "t2v" if name == "t2v_stream" else name
    threads = int(profile.model(name).get("threads", 0))
    return config, profile, threads


# The request parameter that names the t2v request a text_encoder call is for. Triton's
# response cache keys on the inputs only, so a cached answer still names the request it was
# computed for: a hit is an answer computed for another request.
COMPUTED_FOR = "t2v_request"


class TextEncoderModel:
    def initialize(self, args):
        _, profile, threads = _setup(args)
        self.stage = stages.TextStage(profile, threads, stages.instance_device(args))

    def execute(self, requests):
        with transfers.record("text_encoder", len(requests)):
            return self._execute(requests)

    def _execute(self, requests):
        def inputs_of(r):
            prompts = input_array(r, "prompt_text")
            for_request = str(json.loads(r.parameters() or "{}").get(COMPUTED_FOR, ""))
            return [prompts, input_array(r, "negative_text"),
                    np.array([[for_request.encode()]] * len(prompts), dtype=np.object_)]

        def run(prompts, negatives, for_requests):
            t0 = time.perf_counter()
            embeds = self.stage.encode([(p[0].decode("utf-8"), n[0].decode("utf-8"))
                                        for p, n in zip(prompts, negatives)])
            ms = round((time.perf_counter() - t0) * 1e3, 2)
            infos = [json.dumps({"ms": ms, "computed_for": f[0].decode()}).encode()
                     for f in for_requests]
            return {"prompt_embeds": embeds,
                    "text_info": np.array(infos, dtype=np.object_).reshape(-1, 1)}
        return batched(requests, ["prompt_text", "negative_text"], run, inputs_of)


class DitModel:
    def initialize(self, args):
        config, profile, threads = _setup(args)
        # `dit` serves the base weights; `dit_<variant>` a variant's (its LoRAs fused)
        name = config["parameters"].get("variant", {}).get("string_value")
        variant = variants_of(profile)[name] if name else None
        self.runner = stages.make_runner(profile, "dit", "dit", threads,
                                         stages.instance_device(args), variant)
        self.faults = bool((profile.data.get("faults") or {}).get("enabled"))

    def execute(self, requests):
        with transfers.record("dit", len(requests)):
            return self._execute(requests)

    def _execute(self, requests):
        names = ["latents", "timestep", "prompt_embeds"]

        def run(latents, timestep, prompt_embeds):
            # tensors in and out where they are: on a GPU instance they never leave it
            feed = {"latents": latents, "timestep": timestep.reshape(-1),
                    "prompt_embeds": prompt_embeds}
            device = device_of(self.runner)
            return self.runner.run({k: to_device(v, device) for k, v in feed.items()})

        # requests carrying an injected fault run on their own, like a failing member of a
        # batch would after batched's retry
        responses = [None] * len(requests)
        plain = []
        for i, r in enumerate(requests):
            fault = input_array(r, "fault")
            if fault is None:
                plain.append(i)
                continue
            kind = fault.reshape(-1)[0].decode()
            try:
                if not self.faults:
                    raise RequestValidationError("fault injection is disabled in this profile")
                if kind == "raise":
                    raise RuntimeError("dit runner failed (injected fault)")
                outputs = run(*[input_tensor(r, n) for n in names])
                if kind != "nan":
                    raise RequestValidationError(f"fault must be raise or nan, got {kind!r}")
                responses[i] = pb_utils.InferenceResponse(
                    [to_triton(n, torch.full_like(v, float("nan"))) for n, v in outputs.items()])
            except Exception as exc:
                responses[i] = error_response(exc)
        for i, response in zip(plain, batched([requests[i] for i in plain], names, run)):
            responses[i] = response
        return responses


class BlsDit:
    """A DiT model (`dit`, or a variant's `dit_<variant>`) called through BLS, behind the
    runner interface the loop uses: the loop's tensors go out and come back on the loop's
    device (t2v's instance device, the DiT's GPU on a GPU profile). A step is idempotent:
    while the DiT's stub is dead or reloading it is retried (`check` may stop that)."""
    input_names = ["latents", "timestep", "prompt_embeds"]
    output_names = ["noise_pred"]

    def __init__(self, device: str = "cpu", fault: str | None = None, model: str = "dit",
                 check=None):
        self.device = torch.device(device)
        self.calls = 0
        self.fault = fault
        self.model = model
        self.check = check

    def run(self, inputs):
        self.calls += 1
        inputs = dict(inputs)
        inputs["timestep"] = inputs["timestep"].reshape(-1, 1)
        if self.fault:
            n = inputs["latents"].shape[0]
            inputs["fault"] = np.array([[self.fault.encode()]] * n, dtype=np.object_)
        out = bls(self.model, inputs, ["noise_pred"], retry_s=STAGE_RETRY_S, check=self.check)
        return {n: to_device(v, self.device) for n, v in out.items()}


def _fault_for(profile, seed: int) -> str | None:
    """Reliability tests make chosen seeds fail inside dit (faults.enabled profiles only)."""
    faults = profile.data.get("faults") or {}
    if not faults.get("enabled"):
        return None
    if seed in (faults.get("dit_error_seeds") or []):
        return "raise"
    if seed in (faults.get("nan_seeds") or []):
        return "nan"
    return None


class T2VModel:
    """The public `t2v` model: validation, then each stage through BLS, with the denoising
    loop here on the instance's device (the DiT's GPU on a GPU profile). Many instances run
    side by side; their per-step `dit` calls meet in dit's dynamic batcher (step-level
    batching). The client's request is this model's own request, so a cancelled call or an
    expired deadline is seen between any two steps. It alone assembles the response `info`.
    Every stage call is idempotent and retried while that stage's stub is being replaced
    (`triton_io.STAGE_RETRY_S`): a stage crash costs the request time, not its result."""
    name = "t2v"
    tagged_errors = False  # error messages led by their status name (t2v_stream's)

    def initialize(self, args):
        from t2vserve.tokenizer import load_tokenizer

        _, self.profile, _ = _setup(args)
        self.tokenizer = load_tokenizer(self.profile.artifacts / "tokenizer")
        self.preset = get_preset(self.profile.data["model"]["preset"])
        self.scheduler = self.profile.data["model"]["scheduler"]
        # variants with their cache calibrations (a calibration for other weights is
        # refused here, at load) and the model id each serves
        self.variants = stages.load_variants(self.profile)
        self.device = stages.instance_device(args)
        stages.use_device(self.device)

    def execute(self, requests):
        with transfers.record(self.name, len(requests)):
            return self._execute(requests)

    def _execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, r, progress=None):
        """One request -> its response (the error response on failure). `progress(step,
        steps, elapsed_ms)` runs after each denoising step (t2v_stream sends it on)."""
        handle = None
        started = time.perf_counter()
        try:
            values = {n: input_array(r, n) for n in stages.REQUEST_INPUTS}
            variant, model_id = stages.pick_variant(values, self.variants)
            req = stages.parse_request(values, self.profile, self.tokenizer, variant)
            this_request = uuid.uuid4().hex

            def check(stage):
                if r.is_cancelled():
                    raise RequestCancelled(f"request cancelled {stage}")

            def after_step(i, t, x):
                # a NaN/Inf latent would decode to a black or garbage clip: fail loudly here
                if not bool(torch.isfinite(x).all()):
                    raise RuntimeError(f"denoising produced non-finite latents at step "
                                       f"{i + 1}/{req.steps} (seed {req.seed})")
                check(f"after step {i + 1}/{req.steps}")
                if progress is not None:
                    progress(i + 1, req.steps, round((time.perf_counter() - started) * 1e3, 2))

            # 1. text (Triton's response cache answers a repeated prompt pair)
            t0 = time.perf_counter()
            text = bls("text_encoder", {"prompt_text": bytes_array(req.prompt, (1, 1)),
                                         "negative_text": bytes_array(req.negative_prompt, (1, 1))},
                        ["prompt_embeds", "text_info"], {COMPUTED_FOR: this_request},
                        strings=("text_info",), retry_s=STAGE_RETRY_S, check=check)
            text_ms = round((time.perf_counter() - t0) * 1e3, 2)
            text_info = json.loads(string_of(text["text_info"]))
            embeds = text["prompt_embeds"][0]
            if req.guidance_scale <= 1.0:  # no unconditional pass, as WanPipeline
                embeds = embeds[:1]
            check("after the text encoder")
            # 2. the denoising loop, one dit call per step, on this instance's device
            t0 = time.perf_counter()
            shape = latent_shape(self.preset, req.width, req.height, req.num_frames)
            dit = BlsDit(self.device, _fault_for(self.profile, req.seed), variant.dit_model,
                         check)
            spent = {}
            latents = denoise_loop(
                dit, initial_noise(shape, req.seed), embeds, req.steps, req.guidance_scale,
                scheduler=self.scheduler, shift=self.preset.flow_shift, callback=after_step,
                sampling=variant.sampling, stats=spent)
            denoise_ms = round((time.perf_counter() - t0) * 1e3, 2)
            # 3. decode: the frames go to the frame store, a handle comes back
            vae = bls("vae_decoder", {"latents": latents.float()}, ["frames_handle", "vae_ms"],
                       strings=("frames_handle",), retry_s=STAGE_RETRY_S, check=check)
            handle = string_of(vae["frames_handle"])
            check("after the VAE")
            # 4. encode, from the frame store
            out = bls("video_encoder", {"frames_handle": bytes_array(handle),
                                         "fps": np.array([req.fps], np.int32)},
                       ["video", "qc", "encode_ms"], strings=("video",),
                       retry_s=STAGE_RETRY_S, check=check)
            qc = out["qc"].cpu().numpy()
            # the text encoder's time is how long this request waited for its embeddings
            # (queue and compute on a miss, the cache lookup on a hit)
            info = stages.response_info(
                model_id, req, qc, variant=variant.name,
                sampling={"mode": variant.sampling.mode, **{k: spent[k] for k in (
                    "dit_forwards", "timesteps", "cached_steps")}},
                stages_ms={"text_encoder": text_ms, "denoise": denoise_ms,
                           "vae_decoder": round(float(vae["vae_ms"].reshape(-1)[0]), 2),
                           "video_encoder": round(float(out["encode_ms"].reshape(-1)[0]), 2)},
                cache_hit=text_info["computed_for"] != this_request, dit_calls=spent["dit_calls"])
            return pb_utils.InferenceResponse([pb_utils.Tensor("video", out["video"]),
                                               pb_utils.Tensor("qc", qc),
                                               pb_utils.Tensor("info", bytes_array(info))])
        except Exception as exc:
            return error_response(exc, self.tagged_errors)
        finally:
            if handle is not None:
                frames.discard(handle)


class T2VStreamModel(T2VModel):
    """`t2v_stream`, t2v's decoupled twin: the same validation, loop and final outputs, and
    before them one response per denoising step whose only output is `progress` (JSON:
    step, steps, elapsed_ms). The last response (the video, or the error) carries the FINAL
    flag; its error messages lead with their status (`error_response(tagged=True)`), which
    a gRPC stream does not carry. The client's cancellation stops the loop between two
    steps, as on t2v."""
    name = "t2v_stream"
    tagged_errors = True

    def _execute(self, requests):
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for r in requests:
            sender = r.get_response_sender()

            def progress(step, steps, elapsed_ms, sender=sender):
                event = json.dumps({"step": step, "steps": steps, "elapsed_ms": elapsed_ms})
                sender.send(pb_utils.InferenceResponse(
                    [pb_utils.Tensor("progress", bytes_array(event))]))

            response = self._one(r, progress)
            try:
                sender.send(response, flags=final)
            except Exception as exc:  # the client is gone: nobody to tell
                pb_utils.Logger.log_warn(f"t2v_stream: final response not sent: {exc}")
        return None  # decoupled: every response went through the sender


class VaeDecoderModel:
    def initialize(self, args):
        _, profile, threads = _setup(args)
        frames.remove_stale()  # the frames of servers that are gone
        self.stage = stages.VaeStage(profile, threads, stages.instance_device(args))

    def execute(self, requests):
        with transfers.record("vae_decoder", len(requests)):
            return self._execute(requests)

    def _execute(self, requests):
        def run(latents):
            t0 = time.perf_counter()
            handles = self.stage.decode_to_store(latents)
            ms = np.full((len(latents), 1), (time.perf_counter() - t0) * 1e3, np.float32)
            return {"frames_handle": np.array([[h.encode()] for h in handles], np.object_),
                    "vae_ms": ms}
        return batched(requests, ["latents"], run)


class VideoEncoderModel:
    def initialize(self, args):
        _, self.profile, _ = _setup(args)

    def execute(self, requests):
        with transfers.record("video_encoder", len(requests)):
            return self._execute(requests)

    def _execute(self, requests):
        lo, hi = self.profile.limits.fps
        responses = []
        for r in requests:
            try:
                fps = int(input_array(r, "fps").reshape(-1)[0])
                if not lo <= fps <= hi:
                    raise RequestValidationError(f"fps must be in [{lo}, {hi}], got {fps}")
                clip = frames.take(string_of(input_array(r, "frames_handle")))
                t0 = time.perf_counter()
                video, qc = stages.encode_video(clip, fps)
                ms = np.array([(time.perf_counter() - t0) * 1e3], np.float32)
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("video", bytes_array(video)),
                    pb_utils.Tensor("qc", np.asarray(qc, np.float32)),
                    pb_utils.Tensor("encode_ms", ms)]))
            except Exception as exc:
                responses.append(error_response(exc))
        return responses
