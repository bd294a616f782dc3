"""The thin gRPC client over Triton's `t2v` model: sync and asyncio. No model logic.

Deadlines are client-side (`timeout`, seconds); retries happen only on errors that mean
"try again" (queue full / server unavailable), with jittered exponential backoff, and reuse
the same request id so a retry is the same request. INVALID_ARG is never retried.
"""

import asyncio
import hashlib
import json
import math
import random
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

MODEL = "t2v"
INT32_INPUTS = ("width", "height", "num_frames", "fps", "steps")
QC_NAMES = ("mean_luma", "black_frame_ratio", "frozen_frame_ratio", "temporal_flicker")
RETRYABLE = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})


@dataclass(frozen=True)
class Video:
    """One generated clip: the MP4 bytes, its QC figures and the server's account of it."""
    mp4: bytes
    qc: dict[str, float]
    info: dict[str, Any]

    @property
    def model(self) -> str | None:
        """The model id that served the request (preset, checkpoint hash, precision)."""
        return self.info.get("model")

    @property
    def cache_hit(self) -> bool:
        """True when the text embeddings came from the server's response cache."""
        return bool(self.info.get("cache_hit"))

    @property
    def stages_ms(self) -> dict[str, float]:
        return dict(self.info.get("stages_ms", {}))

    @property
    def request(self) -> dict[str, Any]:
        """The request as served: the profile's defaults filled in."""
        return dict(self.info.get("request", {}))


class T2VError(Exception):
    """A failed generation. `status` is the gRPC status name (e.g. INVALID_ARGUMENT).
    Catch a subclass to act on one kind of failure."""

    def __init__(self, status: str, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message

    @property
    def retryable(self) -> bool:
        return isinstance(self, Unavailable)


class InvalidRequest(T2VError, ValueError):
    """The request was refused before any work; `param` names the field and `allowed`
    what it may be, where the message says so (e.g. "a multiple of 32 in [64, 832]")."""

    def __init__(self, status: str, message: str):
        super().__init__(status, message)
        match = _MUST_BE.match(message)
        self.param: str | None = match.group(1) if match else None
        self.allowed: str | None = match.group(2) if match else None


class Unavailable(T2VError):
    """The server cannot take the request now (down, draining, reloading a model); another
    try, later or on another server, can succeed. The client retries these itself."""


class QueueFull(Unavailable):
    """The server's queue is full (Triton's max_queue_size): back off and retry."""


class DeadlineExceeded(T2VError):
    """The client-side deadline passed before the video came back."""


class Cancelled(T2VError):
    """The request was cancelled (by this client, or the server stopped it)."""


class ServerError(T2VError):
    """The server failed the request (INTERNAL, UNKNOWN, a model missing, ...)."""


T2VDeadlineError = DeadlineExceeded  # the name before the error classes existed

_MUST_BE = re.compile(r"^([a-z_]+) must (?:be |fit in )?(.+?)(?:, got .*)?$", re.S)
_QUEUE_FULL = ("exceeds maximum queue size", "queue is full")


def classify(status: str, message: str) -> T2VError:
    """The error class for a gRPC status name and Triton's message."""
    lowered = message.lower()
    if status == "INVALID_ARGUMENT":
        return InvalidRequest(status, message)
    if status == "RESOURCE_EXHAUSTED" or (
            status == "UNAVAILABLE" and any(s in lowered for s in _QUEUE_FULL)):
        return QueueFull(status, message)
    # NOT_FOUND "has no available versions": t2v is unloaded for a drain or a reload
    if status == "UNAVAILABLE" or (status == "NOT_FOUND" and "no available versions" in lowered):
        return Unavailable(status, message)
    if status == "DEADLINE_EXCEEDED":
        return DeadlineExceeded(status, f"no video within the client deadline ({message})")
    if status == "CANCELLED":
        return Cancelled(status, message)
    return ServerError(status, message)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4          # tries in all, the first included
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delay(self, attempt: int, rng: Any = random) -> float:
        # "full jitter": spreads the retries of many clients hit by the same full queue
        return float(rng.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** attempt)))


NO_RETRY = RetryPolicy(attempts=1)


def frames_for(duration: float, fps: int) -> int:
    """The valid frame count (4k+1) nearest to duration x fps: 3 s at 24 fps -> 73."""
    if not duration > 0 or not fps > 0:
        raise _invalid(f"duration and fps must be positive, got {duration} s at {fps} fps")
    return 4 * max(0, round((duration * fps - 1) / 4)) + 1


INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest("INVALID_ARGUMENT", message)


def _check_types(params: dict[str, Any]) -> None:
    """What the wire can carry: the server checks the profile's ranges, but a value that
    does not fit its tensor type (an int beyond INT64, a str for a number) is refused here."""
    for name, value in params.items():
        if value is None:
            continue
        if name in ("negative_prompt", "model_variant"):
            if not isinstance(value, str):
                raise _invalid(f"{name} must be a str, got {type(value).__name__}")
        elif name == "guidance_scale":  # NaN and inf travel as FP32; the server refuses them
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _invalid(f"guidance_scale must be a number, got {value!r}")
        elif name == "duration":
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise _invalid(f"duration must be a finite number, got {value!r}")
        else:
            lo, hi = INT64 if name == "seed" else INT32
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                    or not lo <= value <= hi:
                raise _invalid(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def request_params(*, width: int | None = None, height: int | None = None,
                   duration: float | None = None, num_frames: int | None = None,
                   fps: int | None = None, steps: int | None = None,
                   guidance_scale: float | None = None, seed: int | None = None,
                   negative_prompt: str | None = None,
                   model_variant: str | None = None) -> dict[str, Any]:
    """The `t2v` inputs for a request (None: the server's profile default)."""
    _check_types(dict(width=width, height=height, duration=duration, num_frames=num_frames,
                      fps=fps, steps=steps, guidance_scale=guidance_scale, seed=seed,
                      negative_prompt=negative_prompt, model_variant=model_variant))
    if duration is not None and num_frames is not None:
        raise _invalid("give duration or num_frames, not both")
    if duration is not None:
        if fps is None:
            raise _invalid("duration needs fps (frames = nearest 4k+1 to duration x fps)")
        num_frames = frames_for(duration, fps)
    params = dict(width=width, height=height, num_frames=num_frames, fps=fps, steps=steps,
                  guidance_scale=guidance_scale, seed=seed, negative_prompt=negative_prompt)
    if model_variant is not None:  # absent from the id of a request that does not name one
        params["model_variant"] = model_variant
    return params


def idempotency_key(prompt: str, params: dict[str, Any]) -> str:
    """A request id derived from what is asked: the same request gets the same id."""
    blob = json.dumps({"prompt": prompt, **params}, sort_keys=True, ensure_ascii=False)
    return "t2v-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def build_inputs(grpcclient: Any, prompt: str, params: dict[str, Any]) -> list[Any]:
    """Triton InferInput list for `t2v`; parameters left as None are not sent (the server's
    profile supplies defaults)."""
    def tensor(name: str, array: np.ndarray, dtype: str) -> Any:
        t = grpcclient.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    inputs = [tensor("prompt", np.array([prompt.encode("utf-8")], dtype=np.object_), "BYTES")]
    if params.get("negative_prompt") is not None:
        inputs.append(tensor("negative_prompt", np.array(
            [params["negative_prompt"].encode("utf-8")], dtype=np.object_), "BYTES"))
    for name in INT32_INPUTS:
        if params.get(name) is not None:
            inputs.append(tensor(name, np.array([params[name]], dtype=np.int32), "INT32"))
    if params.get("guidance_scale") is not None:
        inputs.append(tensor("guidance_scale", np.array([params["guidance_scale"]], np.float32), "FP32"))
    if params.get("seed") is not None:
        inputs.append(tensor("seed", np.array([params["seed"]], dtype=np.int64), "INT64"))
    if params.get("model_variant") is not None:
        inputs.append(tensor("model_variant", np.array(
            [params["model_variant"].encode("utf-8")], dtype=np.object_), "BYTES"))
    return inputs


def parse_result(result: Any) -> Video:
    mp4 = result.as_numpy("video").reshape(-1)[0]
    qc = result.as_numpy("qc").reshape(-1)
    info = json.loads(result.as_numpy("info").reshape(-1)[0])
    return Video(mp4=bytes(mp4), qc=dict(zip(QC_NAMES, map(float, qc))), info=info)


def to_error(exc: Any) -> T2VError:
    """tritonclient's InferenceServerException -> the matching T2VError subclass."""
    status = (exc.status() or "UNKNOWN").removeprefix("StatusCode.")
    return classify(status, exc.message() or str(exc))


class _Base:
    def __init__(self, url: str, retry: RetryPolicy, grpc_module: Any):
        self.url, self.retry, self._grpc = url, retry, grpc_module

    def _prepare(self, prompt: str, request_id: str | None,
                 params: dict[str, Any]) -> tuple[list[Any], list[Any], str]:
        if not isinstance(prompt, str):
            raise _invalid(f"prompt must be a str, got {type(prompt).__name__}")
        params = request_params(**params)
        rid = request_id or idempotency_key(prompt, params)
        outputs = [self._grpc.InferRequestedOutput(n) for n in ("video", "qc", "info")]
        return build_inputs(self._grpc, prompt, params), outputs, rid

    def _pause_or_raise(self, exc: Exception, attempt: int, deadline: float | None) -> float:
        """After a failed try: the pause before the next one, or raise the error (not
        retryable, no tries left, or the pause would run past the deadline)."""
        err = to_error(exc)
        if not err.retryable or attempt + 1 == self.retry.attempts:
            raise err from exc
        pause = self.retry.delay(attempt)
        if deadline is not None and time.monotonic() + pause >= deadline:
            raise err from exc
        return pause


class T2VClient(_Base):
    """Synchronous client. `url` is host:port of Triton's gRPC endpoint (or any target gRPC
    accepts, e.g. `dns:///t2v.internal:8001`)."""

    def __init__(self, url: str = "127.0.0.1:8001", *, retry: RetryPolicy = RetryPolicy()):
        import tritonclient.grpc as grpcclient

        super().__init__(url, retry, grpcclient)
        self.client = grpcclient.InferenceServerClient(url=url)

    def generate(self, prompt: str, *, width: int | None = None, height: int | None = None,
                 duration: float | None = None, num_frames: int | None = None,
                 fps: int | None = None, steps: int | None = None,
                 guidance_scale: float | None = None, seed: int | None = None,
                 negative_prompt: str | None = None, model_variant: str | None = None,
                 priority: int = 0, timeout: float | None = None,
                 request_id: str | None = None) -> Video:
        """Generate one clip and wait for it.

        prompt: the text, Chinese or English. width, height: pixels, multiples of 32.
        duration (seconds, with fps) or num_frames (4k+1). fps: frames per second.
        steps: denoising steps. guidance_scale: classifier-free guidance (1 = off).
        seed: same seed and inputs, same video. negative_prompt: what to avoid.
        model_variant: one of the server profile's model variants (its first by default).
        Left as None, a parameter takes the server profile's default.
        priority: Triton queue priority (1 is the highest). timeout: the whole call's
        deadline in seconds, retries included. request_id: defaults to a hash of the
        request, so a retry is the same request.

        Raises InvalidRequest (never retried), QueueFull / Unavailable (after the retry
        policy's tries), DeadlineExceeded, Cancelled, ServerError.
        """
        from tritonclient.utils import InferenceServerException

        inputs, outputs, rid = self._prepare(prompt, request_id, dict(
            width=width, height=height, duration=duration, num_frames=num_frames, fps=fps,
            steps=steps, guidance_scale=guidance_scale, seed=seed,
            negative_prompt=negative_prompt, model_variant=model_variant))
        deadline = None if timeout is None else time.monotonic() + timeout
        for attempt in range(self.retry.attempts):
            left = None if deadline is None else max(deadline - time.monotonic(), 1e-3)
            try:
                result = self.client.infer(MODEL, inputs, outputs=outputs, request_id=rid,
                                           priority=priority, client_timeout=left)
                return parse_result(result)
            except InferenceServerException as exc:
                time.sleep(self._pause_or_raise(exc, attempt, deadline))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "T2VClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncT2VClient(_Base):
    """asyncio client. Cancelling the awaiting task cancels the gRPC call, and the server
    stops the request at its next denoising step."""

    def __init__(self, url: str = "127.0.0.1:8001", *, retry: RetryPolicy = RetryPolicy()):
        import tritonclient.grpc.aio as aioclient

        super().__init__(url, retry, aioclient)
        self.client = aioclient.InferenceServerClient(url=url)

    async def generate(self, prompt: str, *, width: int | None = None,
                       height: int | None = None, duration: float | None = None,
                       num_frames: int | None = None, fps: int | None = None,
                       steps: int | None = None, guidance_scale: float | None = None,
                       seed: int | None = None, negative_prompt: str | None = None,
                       model_variant: str | None = None, priority: int = 0,
                       timeout: float | None = None, request_id: str | None = None) -> Video:
        """As T2VClient.generate, awaited."""
        from tritonclient.utils import InferenceServerException

        inputs, outputs, rid = self._prepare(prompt, request_id, dict(
            width=width, height=height, duration=duration, num_frames=num_frames, fps=fps,
            steps=steps, guidance_scale=guidance_scale, seed=seed,
            negative_prompt=negative_prompt, model_variant=model_variant))
        deadline = None if timeout is None else time.monotonic() + timeout
        for attempt in range(self.retry.attempts):
            left = None if deadline is None else max(deadline - time.monotonic(), 1e-3)
            try:
                result = await self.client.infer(MODEL, inputs, outputs=outputs, request_id=rid,
                                                 priority=priority, client_timeout=left)
                return parse_result(result)
            except InferenceServerException as exc:
                await asyncio.sleep(self._pause_or_raise(exc, attempt, deadline))
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> "AsyncT2VClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
