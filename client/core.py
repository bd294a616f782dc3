"""The thin gRPC client over Triton's `t2v` model: sync and asyncio. No model logic.

One server (`host:port`) or several (`ipv4:a:p,b:p`, `dns:///name:port`, or `a:p,b:p`):
with several, gRPC spreads the calls round robin and retries one that gets UNAVAILABLE,
and this client's own retry lands on the next server (see `grpc_target`).

Deadlines are client-side (`timeout`, seconds); retries happen only on errors that mean
"try again" (queue full / server unavailable), with jittered exponential backoff, and reuse
the same request id so a retry is the same request. INVALID_ARG is never retried.

`generate_stream` calls `t2v_stream`, t2v's decoupled twin, over a gRPC stream: a `Progress`
after each denoising step, then the `Video`. Closing the stream early cancels the request.
"""

import asyncio
import hashlib
import ipaddress
import json
import math
import queue
import random
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

MODEL = "t2v"
STREAM_MODEL = "t2v_stream"
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


@dataclass(frozen=True)
class Progress:
    """generate_stream's event after each denoising step: `step` of `steps` done,
    `elapsed_ms` since the server took the request."""
    step: int
    steps: int
    elapsed_ms: float


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


# t2v_stream leads its error messages with their status ("[INVALID_ARGUMENT] ..."): a gRPC
# stream carries a response's error message but not its code
_TAGGED = re.compile(r"^\[([A-Z_]+)\] (.*)$", re.S)


def stream_error(exc: Any) -> T2VError:
    """An error from a t2v_stream stream -> the T2VError generate would have raised."""
    if exc.status():  # the stream itself failed (deadline, cancellation, connection)
        return to_error(exc)
    message = exc.message() or str(exc)
    tagged = _TAGGED.match(message)
    if tagged:
        return classify(tagged.group(1), tagged.group(2))
    # Triton's own answers (before the model saw the request) come untagged
    lowered = message.lower()
    if any(s in lowered for s in _QUEUE_FULL):
        return classify("UNAVAILABLE", message)
    if "no available versions" in lowered:
        return classify("NOT_FOUND", message)
    return classify("UNKNOWN", message)


def parse_event(result: Any) -> "Progress | Video":
    """One t2v_stream response: a Progress, or the final Video."""
    progress = result.as_numpy("progress")
    if progress is None:
        return parse_result(result)
    event = json.loads(progress.reshape(-1)[0])
    return Progress(int(event["step"]), int(event["steps"]), float(event["elapsed_ms"]))


def server_info_of(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """t2v's model config (JSON) -> {"model_ids": ..., "request_defaults": ...}."""
    params = config.get("config", config).get("parameters", {})
    try:
        return {key: json.loads(params[key]["string_value"])
                for key in ("model_ids", "request_defaults")}
    except KeyError as exc:
        raise ServerError("NOT_FOUND", f"the server's t2v config has no {exc} parameter "
                                       f"(a server older than this client)") from None


TARGET_FORMS = ("host:port (one server), ipv4:10.0.0.1:8001,10.0.0.2:8001 or "
                "ipv6:[::1]:8001,[::1]:9001 (several by address), dns:///name:port (every "
                "address the name resolves to), or 10.0.0.1:8001,10.0.0.2:8001 (IP literals of "
                "one family; written out as the ipv4:/ipv6: form)")
# Triton's gRPC service: the retry policy below names it, so it covers every method
SERVICE = "inference.GRPCInferenceService"
# gRPC's own retry of a call that failed UNAVAILABLE before the server answered (connection
# refused or lost): at most 5 tries in all (gRPC's cap), a fraction of a second apart, so a
# dead server costs a call milliseconds; the client's RetryPolicy still covers the rest.
CHANNEL_RETRY = {"maxAttempts": 5, "initialBackoff": "0.1s", "maxBackoff": "1s",
                 "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}


def _split_host_port(entry: str, target: str) -> tuple[str, int]:
    host, sep, port = entry.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"server {entry!r} in {target!r} must be host:port with a port in "
                         f"[1, 65535]; a target may be {TARGET_FORMS}")
    return host, int(port)


def _ip_family(host: str) -> str | None:
    """"ipv4" or "ipv6" for an IP literal (IPv6 in brackets), None for a host name."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return None
    if address.version == 6 and bare == host:
        return None  # gRPC needs [::1]:port; an unbracketed IPv6 cannot be told from its port
    return f"ipv{address.version}"


def grpc_target(url: str) -> str:
    """The gRPC target for `url`: one host:port and the gRPC schemes (`ipv4:`, `ipv6:`,
    `dns:`, `unix:`) unchanged; a comma list of IP-literal host:port pairs as `ipv4:a,b` or
    `ipv6:a,b`. gRPC has no target for several host names: such a list is refused, and so
    is a list mixing IPv4 and IPv6. Raises ValueError saying what is allowed."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"the server address is empty; give {TARGET_FORMS}")
    target = url.strip()
    scheme, colon, rest = target.partition(":")
    if colon and scheme in ("ipv4", "ipv6"):
        entries = [e.strip() for e in rest.split(",")]
        for entry in entries:
            host, _ = _split_host_port(entry, target)
            if _ip_family(host) != scheme:
                raise ValueError(f"{entry!r} in {target!r} is not an {scheme} address:port; "
                                 f"a target may be {TARGET_FORMS}")
        return f"{scheme}:{','.join(entries)}"
    if colon and scheme in ("dns", "unix", "unix-abstract"):
        return target
    if "," not in target:
        _split_host_port(target, target)
        return target
    entries = [e.strip() for e in target.split(",")]
    families = set()
    for entry in entries:
        host, _ = _split_host_port(entry, target)
        family = _ip_family(host)
        if family is None:
            raise ValueError(f"several servers by host name ({host!r} in {target!r}) has no "
                             f"gRPC target: give IP addresses (ipv4:10.0.0.1:8001,10.0.0.2:8001)"
                             f" or one name that resolves to every server (dns:///name:port)")
        families.add(family)
    if len(families) > 1:
        raise ValueError(f"{target!r} mixes IPv4 and IPv6 addresses, and gRPC takes one "
                         f"family per target; a target may be {TARGET_FORMS}")
    return f"{families.pop()}:{','.join(entries)}"


def several_servers(target: str) -> bool:
    """True for a target that can name more than one server (an address list or a name)."""
    return target.startswith(("ipv4:", "ipv6:", "dns:"))


def channel_args(target: str) -> list[tuple[str, Any]] | None:
    """tritonclient's channel_args for `target`: None (tritonclient's defaults) for one
    server; for several, round robin and gRPC's retry on UNAVAILABLE. A list replaces
    tritonclient's defaults, so it restates them: INT32_MAX message sizes (a video is
    megabytes, gRPC's default cap is 4 MB) and KeepAliveOptions()'s keepalive."""
    if not several_servers(target):
        return None
    from tritonclient.grpc import KeepAliveOptions
    from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE

    keepalive = KeepAliveOptions()
    config = {"methodConfig": [{"name": [{"service": SERVICE}], "retryPolicy": CHANNEL_RETRY}]}
    return [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(config)),
    ]


class _Base:
    def __init__(self, url: str, retry: RetryPolicy, grpc_module: Any):
        self.url = grpc_target(url)
        self.retry, self._grpc = retry, grpc_module
        self.channel_args = channel_args(self.url)

    def _connect(self) -> Any:
        return self._grpc.InferenceServerClient(url=self.url, channel_args=self.channel_args)

    def _prepare(self, prompt: str, request_id: str | None, params: dict[str, Any],
                 stream: bool = False) -> tuple[list[Any], list[Any], str]:
        if not isinstance(prompt, str):
            raise _invalid(f"prompt must be a str, got {type(prompt).__name__}")
        params = request_params(**params)
        rid = request_id or idempotency_key(prompt, params)
        names = ("video", "qc", "info") + (("progress",) if stream else ())
        outputs = [self._grpc.InferRequestedOutput(n) for n in names]
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
    """Synchronous client. `url`: Triton's gRPC endpoint, host:port, or several servers
    (`ipv4:a:p,b:p`, `dns:///name:port`, `a:p,b:p`; see grpc_target), balanced round robin."""

    def __init__(self, url: str = "127.0.0.1:8001", *, retry: RetryPolicy = RetryPolicy()):
        import tritonclient.grpc as grpcclient

        super().__init__(url, retry, grpcclient)
        self.client = self._connect()

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

    def generate_stream(self, prompt: str, *, width: int | None = None,
                        height: int | None = None, duration: float | None = None,
                        num_frames: int | None = None, fps: int | None = None,
                        steps: int | None = None, guidance_scale: float | None = None,
                        seed: int | None = None, negative_prompt: str | None = None,
                        model_variant: str | None = None, priority: int = 0,
                        timeout: float | None = None,
                        request_id: str | None = None) -> Iterator["Progress | Video"]:
        """As generate, through `t2v_stream`: yields a Progress after each denoising step,
        then the Video. Closing the generator early (break, .close()) cancels the request:
        the server stops between two steps. Raises what generate raises; a queue-full or
        unavailable server is retried by the policy until the first event arrives."""
        inputs, outputs, rid = self._prepare(prompt, request_id, dict(
            width=width, height=height, duration=duration, num_frames=num_frames, fps=fps,
            steps=steps, guidance_scale=guidance_scale, seed=seed,
            negative_prompt=negative_prompt, model_variant=model_variant), stream=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        for attempt in range(self.retry.attempts):
            left = None if deadline is None else max(deadline - time.monotonic(), 1e-3)
            events: queue.Queue[tuple[Any, Any]] = queue.Queue()
            # one stream per connection (tritonclient): a fresh client for each
            client = self._connect()
            video, started = None, False
            try:
                client.start_stream(callback=lambda result, error: events.put((result, error)),
                                    stream_timeout=left)
                client.async_stream_infer(STREAM_MODEL, inputs, outputs=outputs,
                                          request_id=rid, priority=priority)
                while True:
                    try:
                        wait = None if deadline is None else max(deadline - time.monotonic(), 0)
                        result, error = events.get(timeout=None if wait is None else wait + 5)
                    except queue.Empty:  # the stream's own deadline should have come first
                        raise DeadlineExceeded("DEADLINE_EXCEEDED",
                                               "no video within the client deadline") from None
                    if error is not None:
                        err = stream_error(error)
                        if started or not err.retryable or attempt + 1 == self.retry.attempts:
                            raise err from error
                        break
                    event = parse_event(result)
                    started = True
                    if isinstance(event, Video):
                        video = event
                        break
                    yield event
            finally:
                # still running (closed early, or an error here): cancel it on the server
                client.stop_stream(cancel_requests=video is None)
                client.close()
            if video is not None:  # the stream is closed before the last event is handed out
                yield video
                return
            pause = self.retry.delay(attempt)
            if deadline is not None and time.monotonic() + pause >= deadline:
                raise err from error
            time.sleep(pause)
        raise AssertionError("unreachable")

    def server_info(self) -> dict[str, dict[str, Any]]:
        """What the server serves: {"model_ids": {variant (or "base"): model id, the default
        first}, "request_defaults": {what an omitted parameter becomes}}, from t2v's config.
        With a request, enough to know the model and request a clip will be made with."""
        from tritonclient.utils import InferenceServerException

        try:
            return server_info_of(self.client.get_model_config(MODEL, as_json=True))
        except InferenceServerException as exc:
            raise to_error(exc) from exc

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
        self.client = self._connect()

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

    async def generate_stream(self, prompt: str, *, width: int | None = None,
                              height: int | None = None, duration: float | None = None,
                              num_frames: int | None = None, fps: int | None = None,
                              steps: int | None = None, guidance_scale: float | None = None,
                              seed: int | None = None, negative_prompt: str | None = None,
                              model_variant: str | None = None, priority: int = 0,
                              timeout: float | None = None, request_id: str | None = None
                              ) -> AsyncIterator["Progress | Video"]:
        """As T2VClient.generate_stream, as an async generator (`async for`). Leaving the
        loop early (break, aclose(), a cancelled task) cancels the request."""
        inputs, outputs, rid = self._prepare(prompt, request_id, dict(
            width=width, height=height, duration=duration, num_frames=num_frames, fps=fps,
            steps=steps, guidance_scale=guidance_scale, seed=seed,
            negative_prompt=negative_prompt, model_variant=model_variant), stream=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        request = dict(model_name=STREAM_MODEL, inputs=inputs, outputs=outputs,
                       request_id=rid, priority=priority)
        for attempt in range(self.retry.attempts):
            left = None if deadline is None else max(deadline - time.monotonic(), 1e-3)
            client = self._connect()
            sent = asyncio.Event()

            async def one_request() -> AsyncIterator[dict[str, Any]]:
                yield request
                await sent.wait()  # half-closing the stream early would end it

            responses = client.stream_infer(one_request(), stream_timeout=left)
            video, started = None, False
            try:
                async for result, error in _stream_events(responses):
                    if error is not None:
                        err = stream_error(error)
                        if started or not err.retryable or attempt + 1 == self.retry.attempts:
                            raise err from error
                        break
                    event = parse_event(result)
                    started = True
                    if isinstance(event, Video):
                        video = event
                        break
                    yield event
            finally:
                sent.set()
                if video is None:  # still running (left early, or an error): cancel it
                    responses.cancel()
                await client.close()
            if video is not None:
                yield video
                return
            pause = self.retry.delay(attempt)
            if deadline is not None and time.monotonic() + pause >= deadline:
                raise err from error
            await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def server_info(self) -> dict[str, dict[str, Any]]:
        """As T2VClient.server_info, awaited."""
        from tritonclient.utils import InferenceServerException

        try:
            return server_info_of(await self.client.get_model_config(MODEL, as_json=True))
        except InferenceServerException as exc:
            raise to_error(exc) from exc

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> "AsyncT2VClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _stream_events(responses: Any) -> AsyncIterator[tuple[Any, Any]]:
    """(result, error) pairs of an aio stream, a failed stream (deadline, cancellation,
    connection) as its last error."""
    import importlib

    from tritonclient.grpc._utils import get_error_grpc
    from tritonclient.utils import InferenceServerException

    rpc_error: Any = importlib.import_module("grpc").RpcError  # grpc ships no type stubs
    try:
        async for pair in responses:
            yield pair
    except InferenceServerException as exc:
        yield None, exc
    except rpc_error as exc:
        yield None, get_error_grpc(exc)
