"""The thin gRPC client over Triton's `t2v` model: sync and asyncio. No model logic.

Deadlines are client-side (`timeout`, seconds); retries happen only on errors that mean
"try again" (queue full / server unavailable), with jittered exponential backoff, and reuse
the same request id so a retry is the same request. INVALID_ARG is never retried.
"""

import asyncio
import hashlib
import json
import random
import time
from dataclasses import dataclass

import numpy as np

MODEL = "t2v"
INT32_INPUTS = ("width", "height", "num_frames", "fps", "steps")
QC_NAMES = ("mean_luma", "black_frame_ratio", "frozen_frame_ratio", "temporal_flicker")
RETRYABLE = frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})


@dataclass(frozen=True)
class Video:
    mp4: bytes
    qc: dict
    info: dict


class T2VError(Exception):
    """A failed generation; `status` is the gRPC status name (e.g. INVALID_ARGUMENT)."""

    def __init__(self, status: str, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message

    @property
    def retryable(self) -> bool:
        # NOT_FOUND "has no available versions": t2v is unloaded for a drain or a reload;
        # another try (after the pause, or on another server behind the balancer) can succeed
        return self.status in RETRYABLE or (
            self.status == "NOT_FOUND" and "no available versions" in self.message)


class T2VDeadlineError(T2VError):
    """The client-side deadline passed before the video came back."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4          # tries in all, the first included
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delay(self, attempt: int, rng=random) -> float:
        # "full jitter": spreads the retries of many clients hit by the same full queue
        return rng.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** attempt))


NO_RETRY = RetryPolicy(attempts=1)


def frames_for(duration: float, fps: int) -> int:
    """The valid frame count (4k+1) nearest to duration x fps: 3 s at 24 fps -> 73."""
    if not duration > 0 or not fps > 0:
        raise ValueError(f"duration and fps must be positive, got {duration} s at {fps} fps")
    return 4 * max(0, round((duration * fps - 1) / 4)) + 1


def request_params(*, width=None, height=None, duration=None, num_frames=None, fps=None,
                   steps=None, guidance_scale=None, seed=None, negative_prompt=None) -> dict:
    if duration is not None and num_frames is not None:
        raise ValueError("give duration or num_frames, not both")
    if duration is not None:
        if fps is None:
            raise ValueError("duration needs fps (frames = nearest 4k+1 to duration x fps)")
        num_frames = frames_for(duration, fps)
    return dict(width=width, height=height, num_frames=num_frames, fps=fps, steps=steps,
                guidance_scale=guidance_scale, seed=seed, negative_prompt=negative_prompt)


def idempotency_key(prompt: str, params: dict) -> str:
    """A request id derived from what is asked: the same request gets the same id."""
    blob = json.dumps({"prompt": prompt, **params}, sort_keys=True, ensure_ascii=False)
    return "t2v-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def build_inputs(grpcclient, prompt: str, params: dict):
    """Triton InferInput list for `t2v`; parameters left as None are not sent (the server's
    profile supplies defaults)."""
    def tensor(name, array, dtype):
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
    return inputs


def parse_result(result) -> Video:
    mp4 = result.as_numpy("video").reshape(-1)[0]
    qc = result.as_numpy("qc").reshape(-1)
    info = json.loads(result.as_numpy("info").reshape(-1)[0])
    return Video(mp4=bytes(mp4), qc=dict(zip(QC_NAMES, map(float, qc))), info=info)


def to_error(exc) -> T2VError:
    status = (exc.status() or "UNKNOWN").removeprefix("StatusCode.")
    message = exc.message() or str(exc)
    if status == "DEADLINE_EXCEEDED":
        return T2VDeadlineError(status, f"no video within the client deadline ({message})")
    return T2VError(status, message)


class _Base:
    def __init__(self, url: str, retry: RetryPolicy, grpc_module):
        self.url, self.retry, self._grpc = url, retry, grpc_module

    def _prepare(self, prompt, request_id, kwargs):
        if not isinstance(prompt, str):
            raise TypeError("prompt must be a str")
        params = request_params(**kwargs)
        rid = request_id or idempotency_key(prompt, params)
        outputs = [self._grpc.InferRequestedOutput(n) for n in ("video", "qc", "info")]
        return build_inputs(self._grpc, prompt, params), outputs, rid


    def _pause_or_raise(self, exc, attempt: int, deadline: float | None) -> float:
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
    """Synchronous client. `url` is host:port of Triton's gRPC endpoint."""

    def __init__(self, url: str = "127.0.0.1:8001", *, retry: RetryPolicy = RetryPolicy()):
        import tritonclient.grpc as grpcclient

        super().__init__(url, retry, grpcclient)
        self.client = grpcclient.InferenceServerClient(url=url)

    def generate(self, prompt: str, *, priority: int = 0, timeout: float | None = None,
                 request_id: str | None = None, **kwargs) -> Video:
        """kwargs: width, height, duration | num_frames, fps, steps, guidance_scale, seed,
        negative_prompt. `timeout` is the whole call's deadline in seconds, retries included."""
        from tritonclient.utils import InferenceServerException

        inputs, outputs, rid = self._prepare(prompt, request_id, kwargs)
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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncT2VClient(_Base):
    """asyncio client. Cancelling the awaiting task cancels the gRPC call, and the server
    stops the request at its next denoising step."""

    def __init__(self, url: str = "127.0.0.1:8001", *, retry: RetryPolicy = RetryPolicy()):
        import tritonclient.grpc.aio as aioclient

        super().__init__(url, retry, aioclient)
        self.client = aioclient.InferenceServerClient(url=url)

    async def generate(self, prompt: str, *, priority: int = 0, timeout: float | None = None,
                       request_id: str | None = None, **kwargs) -> Video:
        from tritonclient.utils import InferenceServerException

        inputs, outputs, rid = self._prepare(prompt, request_id, kwargs)
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

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
