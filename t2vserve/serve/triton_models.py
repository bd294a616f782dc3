"""Triton Python-backend models: thin adapters from Triton tensors to `stages`.

`model_repository/<name>/1/model.py` imports one class from here as TritonPythonModel.
Every model reads its deployment profile from the `profile` parameter of its config.
"""

import json
import time
import uuid
from collections import defaultdict

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from t2vserve.pipeline import denoise_loop, initial_noise, latent_shape
from t2vserve.presets import get_preset
from t2vserve.profile import load_profile
from t2vserve.runners import device_of, to_device, to_host
from t2vserve.schema import RequestValidationError
from t2vserve.serve import stages, transfers


def _setup(args):
    config = json.loads(args["model_config"])
    profile = load_profile(config["parameters"]["profile"]["string_value"])
    threads = int(profile.model(config["name"]).get("threads", 0))
    return config, profile, threads


def _input(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def _bytes(value: bytes | str, shape=(1,)) -> np.ndarray:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return np.array([data], dtype=np.object_).reshape(shape)


class RequestCancelled(Exception):
    pass


def _error(exc: Exception):
    if isinstance(exc, RequestValidationError):
        code = pb_utils.TritonError.INVALID_ARG
    elif isinstance(exc, RequestCancelled):
        code = pb_utils.TritonError.CANCELLED
    else:
        code = pb_utils.TritonError.INTERNAL
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc), code))


def _batched(requests, names, run, inputs_of=None):
    """Dynamic batching in a Python model: concatenate the requests that share shapes, run
    once, split the outputs back by each request's batch size. If a merged run fails, each
    of its requests runs alone, so one bad request fails itself and not its batchmates.
    `inputs_of(request)` gives a request's arrays where they are not just its `names`."""
    responses = [None] * len(requests)
    groups = defaultdict(list)
    for i, r in enumerate(requests):
        arrays = inputs_of(r) if inputs_of else [_input(r, n) for n in names]
        groups[tuple(a.shape[1:] for a in arrays)].append((i, arrays))

    def run_group(members):
        batch = [np.concatenate([m[1][k] for m in members]) for k in range(len(members[0][1]))]
        outputs = run(*batch)
        offset = 0
        for i, arrays in members:
            n = arrays[0].shape[0]
            responses[i] = pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, np.ascontiguousarray(v[offset:offset + n]))
                 for name, v in outputs.items()])
            offset += n

    for members in groups.values():
        try:
            run_group(members)
        except Exception as exc:
            if len(members) == 1:
                responses[members[0][0]] = _error(exc)
                continue
            for member in members:
                try:
                    run_group([member])
                except Exception as exc_one:
                    responses[member[0]] = _error(exc_one)
    return responses


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
            prompts = _input(r, "prompt_text")
            for_request = str(json.loads(r.parameters() or "{}").get(COMPUTED_FOR, ""))
            return [prompts, _input(r, "negative_text"),
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
        return _batched(requests, ["prompt_text", "negative_text"], run, inputs_of)


class DitModel:
    def initialize(self, args):
        _, profile, threads = _setup(args)
        self.runner = stages.make_runner(profile, "dit", "dit", threads,
                                         stages.instance_device(args))
        self.faults = bool((profile.data.get("faults") or {}).get("enabled"))

    def execute(self, requests):
        with transfers.record("dit", len(requests)):
            return self._execute(requests)

    def _execute(self, requests):
        names = ["latents", "timestep", "prompt_embeds"]

        def run(latents, timestep, prompt_embeds):
            # the edges: Triton CPU tensors in, host arrays out for the response tensors
            feed = {"latents": latents, "timestep": timestep.reshape(-1),
                    "prompt_embeds": prompt_embeds}
            device = device_of(self.runner)
            out = self.runner.run({k: to_device(v, device) for k, v in feed.items()})
            return {k: to_host(v) for k, v in out.items()}

        # requests carrying an injected fault run on their own, like a failing member of a
        # batch would after _batched's retry
        responses = [None] * len(requests)
        plain = []
        for i, r in enumerate(requests):
            fault = _input(r, "fault")
            if fault is None:
                plain.append(i)
                continue
            kind = fault.reshape(-1)[0].decode()
            try:
                if not self.faults:
                    raise RequestValidationError("fault injection is disabled in this profile")
                if kind == "raise":
                    raise RuntimeError("dit runner failed (injected fault)")
                outputs = run(*[_input(r, n) for n in names])
                if kind != "nan":
                    raise RequestValidationError(f"fault must be raise or nan, got {kind!r}")
                responses[i] = pb_utils.InferenceResponse(
                    [pb_utils.Tensor(n, np.full_like(v, np.nan)) for n, v in outputs.items()])
            except Exception as exc:
                responses[i] = _error(exc)
        for i, response in zip(plain, _batched([requests[i] for i in plain], names, run)):
            responses[i] = response
        return responses


def _bls(model: str, inputs: dict, outputs: list[str], parameters: dict | None = None) -> dict:
    """One call to another model of this server; an error there becomes an exception here."""
    request = pb_utils.InferenceRequest(
        model_name=model, requested_output_names=outputs,
        inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
        **({"parameters": parameters} if parameters else {}))
    response = request.exec()
    if response.has_error():
        raise RuntimeError(f"{model}: {response.error().message()}")
    return {n: pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in outputs}


class BlsDit:
    """The `dit` model called through BLS, behind the runner interface the loop uses."""
    input_names = ["latents", "timestep", "prompt_embeds"]
    output_names = ["noise_pred"]
    device = torch.device("cpu")  # BLS tensors are host tensors here

    def __init__(self, fault: str | None = None):
        self.calls = 0
        self.fault = fault

    def run(self, inputs):
        self.calls += 1
        inputs = {n: to_host(v) for n, v in inputs.items()}  # the edge: Triton tensors
        inputs["timestep"] = inputs["timestep"].reshape(-1, 1)
        if self.fault:
            n = inputs["latents"].shape[0]
            inputs["fault"] = np.array([[self.fault.encode()]] * n, dtype=np.object_)
        out = _bls("dit", inputs, ["noise_pred"])
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
    loop here. Many instances run side by side; their per-step `dit` calls meet in dit's
    dynamic batcher (step-level batching). The client's request is this model's own request,
    so a cancelled call or an expired deadline is seen between any two steps."""

    def initialize(self, args):
        from t2vserve.tokenizer import load_tokenizer

        _, self.profile, _ = _setup(args)
        self.tokenizer = load_tokenizer(self.profile.artifacts / "tokenizer")
        self.preset = get_preset(self.profile.data["model"]["preset"])
        self.scheduler = self.profile.data["model"]["scheduler"]

    def execute(self, requests):
        with transfers.record("t2v", len(requests)):
            return self._execute(requests)

    def _execute(self, requests):
        return [self._one(r) for r in requests]

    def _one(self, r):
        try:
            values = {n: _input(r, n) for n in stages.REQUEST_INPUTS}
            req = stages.parse_request(values, self.profile, self.tokenizer)
            this_request = uuid.uuid4().hex

            def check(stage):
                if r.is_cancelled():
                    raise RequestCancelled(f"request cancelled {stage}")

            def after_step(i, t, x):
                # a NaN/Inf latent would decode to a black or garbage clip: fail loudly here
                if not np.isfinite(x).all():
                    raise RuntimeError(f"denoising produced non-finite latents at step "
                                       f"{i + 1}/{req.steps} (seed {req.seed})")
                check(f"after step {i + 1}/{req.steps}")

            # 1. text (Triton's response cache answers a repeated prompt pair)
            t0 = time.perf_counter()
            text = _bls("text_encoder", {"prompt_text": _bytes(req.prompt, (1, 1)),
                                         "negative_text": _bytes(req.negative_prompt, (1, 1))},
                        ["prompt_embeds", "text_info"], {COMPUTED_FOR: this_request})
            text_ms = round((time.perf_counter() - t0) * 1e3, 2)
            text_info = json.loads(text["text_info"].reshape(-1)[0])
            embeds = text["prompt_embeds"][0]
            if req.guidance_scale <= 1.0:  # no unconditional pass, as WanPipeline
                embeds = embeds[:1]
            check("after the text encoder")
            # 2. the denoising loop, one dit call per step
            t0 = time.perf_counter()
            shape = latent_shape(self.preset, req.width, req.height, req.num_frames)
            dit = BlsDit(_fault_for(self.profile, req.seed))
            latents = denoise_loop(
                dit, initial_noise(shape, req.seed), embeds, req.steps, req.guidance_scale,
                scheduler=self.scheduler, shift=self.preset.flow_shift, callback=after_step)
            denoise_ms = round((time.perf_counter() - t0) * 1e3, 2)
            # 3. decode, 4. encode
            vae = _bls("vae_decoder", {"latents": latents.astype(np.float32)}, ["frames", "vae_ms"])
            check("after the VAE")
            # the text encoder's time is how long this request waited for its embeddings
            # (queue and compute on a miss, the cache lookup on a hit)
            info = {"stages_ms": {"text_encoder": text_ms, "denoise": denoise_ms},
                    "cache_hit": text_info["computed_for"] != this_request,
                    "dit_calls": dit.calls}
            params = {k: getattr(req, k) for k in ("width", "height", "num_frames", "fps",
                                                   "steps", "guidance_scale", "seed")}
            out = _bls("video_encoder", {"frames": vae["frames"], "vae_ms": vae["vae_ms"],
                                         "denoise_info": _bytes(json.dumps(info)),
                                         "request_json": _bytes(json.dumps(params))},
                       ["video", "qc", "info"])
            return pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in out.items()])
        except Exception as exc:
            return _error(exc)


class VaeDecoderModel:
    def initialize(self, args):
        _, profile, threads = _setup(args)
        self.stage = stages.VaeStage(profile, threads, stages.instance_device(args))

    def execute(self, requests):
        with transfers.record("vae_decoder", len(requests)):
            return self._execute(requests)

    def _execute(self, requests):
        def run(latents):
            t0 = time.perf_counter()
            frames = self.stage.decode(latents)
            ms = np.full((len(latents), 1), (time.perf_counter() - t0) * 1e3, np.float32)
            return {"frames": frames, "vae_ms": ms}
        return _batched(requests, ["latents"], run)


class VideoEncoderModel:
    def initialize(self, args):
        _, profile, _ = _setup(args)
        self.model_id = stages.model_id(stages.load_manifest(profile))

    def execute(self, requests):
        with transfers.record("video_encoder", len(requests)):
            return self._execute(requests)

    def _execute(self, requests):
        responses = []
        for r in requests:
            try:
                params = json.loads(_input(r, "request_json").reshape(-1)[0])
                info = json.loads(_input(r, "denoise_info").reshape(-1)[0])
                info["model"] = self.model_id
                info["stages_ms"]["vae_decoder"] = round(float(_input(r, "vae_ms").reshape(-1)[0]), 2)
                info["request"] = {k: params[k] for k in ("width", "height", "num_frames", "fps",
                                                          "steps", "guidance_scale", "seed")}
                frames = _input(r, "frames")
                video, qc, info_json = stages.finish_video(frames.reshape(frames.shape[-4:]),
                                                           params["fps"], info)
                responses.append(pb_utils.InferenceResponse([
                    pb_utils.Tensor("video", _bytes(video)),
                    pb_utils.Tensor("qc", qc),
                    pb_utils.Tensor("info", _bytes(info_json))]))
            except Exception as exc:
                responses.append(_error(exc))
        return responses
