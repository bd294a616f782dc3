"""HTTP shim for platforms that integrate over plain HTTP (`t2vserve gateway`).

POST /t2v/generate  application/json {prompt, negative_prompt, width, height,
                    num_frames | duration + fps, fps, steps, guidance_scale, seed,
                    model_variant, timeout}
  200 video/mp4 (QC and stage timings in X-T2V-QC / X-T2V-Info headers; the prompt's
      compliance check in X-T2V-Compliance: action, rule ids, spans, the rewrite if any)
  400 bad input. The gateway checks what it knows without the server: JSON types, the wire
      ranges (INT32 fields positive, seed INT64, floats finite and within float32), duration
      and timeout > 0, duration only with fps and never with num_frames. The server checks
      the profile's ranges and its message is passed on ("width must be a multiple of 32
      in [64, 832], got 100").
  400 compliance_blocked: a `block` rule matched the prompt (the message names rule and span)
  405 not POST, 413 body over 64 KiB, 415 not JSON
  503 server busy/unavailable, 504 deadline passed, 499 cancelled, 502 anything else upstream
GET /healthz  200 when Triton is ready.
Every error, 404 and 500 included, is one JSON object in the Stripe/OpenAI shape:
  {"error": {"code": "out_of_range", "message": "...", "param": "seed", "request_id": "req_..."}}
and every response carries its X-Request-Id. Forwards to Triton over gRPC; no model logic.
"""

import json
import logging
import math
import uuid

import numpy as np
from aiohttp import web

from t2vserve.client.compliance import Check, ComplianceBlocked, check_prompt, default_rules
from t2vserve.client.core import INT32, INT32_INPUTS, INT64, AsyncT2VClient, T2VError, frames_for

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
INT32_MAX = INT32[1]
INT64_MIN, INT64_MAX = INT64  # the client's wire ranges, one definition
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_TIMEOUT_S = 24 * 3600.0
TEXT_FIELDS = ("prompt", "negative_prompt", "model_variant")
FIELDS = (*TEXT_FIELDS, *INT32_INPUTS, "seed", "guidance_scale", "duration", "timeout")
INT_RANGES = {**{name: (1, INT32_MAX, "a positive INT32") for name in INT32_INPUTS},
              "seed": (INT64_MIN, INT64_MAX, "an INT64")}
# a failed generation's gRPC status -> HTTP status and error code; anything else is a 502
UPSTREAM = {"INVALID_ARGUMENT": (400, "invalid_request"), "UNAVAILABLE": (503, "unavailable"),
            "RESOURCE_EXHAUSTED": (503, "queue_full"),
            "DEADLINE_EXCEEDED": (504, "deadline_exceeded"), "CANCELLED": (499, "cancelled")}
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
              dict: "object", type(None): "null"}
CLIENT = web.AppKey("client", AsyncT2VClient)
REQUEST_ID = web.RequestKey("request_id", str)


class GatewayError(Exception):
    """An answer other than a video; the middleware turns it into the JSON error body."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param
        self.headers = headers


def _bad(code: str, message: str, param: str | None = None) -> GatewayError:
    return GatewayError(400, code, message, param)


def comply(prompt: str, param: str = "prompt") -> Check:
    """The prompt's compliance check; a block is a 400 naming the rule and the span."""
    check = check_prompt(prompt)
    if check.action == "block":
        raise GatewayError(400, "compliance_blocked", str(ComplianceBlocked(check)), param,
                           headers={"X-T2V-Compliance": check.header()})
    return check


def _show(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _wrong_type(name: str, wanted: str, value) -> GatewayError:
    return _bad("invalid_type", f"{name} must be {wanted}, got {JSON_TYPES[type(value)]} "
                                f"{_show(value)}", name)


def check_field(name: str, value) -> None:
    """One field's JSON type, and the range its tensor (INT32, INT64, FP32) can carry."""
    if name in TEXT_FIELDS:
        if not isinstance(value, str):
            raise _wrong_type(name, "a string", value)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise _bad("invalid_value", f"{name} must be valid Unicode (no lone surrogates)", name)
        return
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if name in INT_RANGES:
        lo, hi, what = INT_RANGES[name]
        if not is_int:
            raise _wrong_type(name, "an integer", value)
        if not lo <= value <= hi:
            raise _bad("out_of_range", f"{name} must be {what}, in [{lo}, {hi}], "
                                       f"got {_show(value)}", name)
        return
    if not is_int and not isinstance(value, float):
        raise _wrong_type(name, "a number", value)
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad("out_of_range", f"{name} must be a finite number, got {_show(value)}", name)
    if name == "guidance_scale" and abs(value) > FLOAT32_MAX:  # int vs float compares exactly
        raise _bad("out_of_range", f"guidance_scale must fit FP32 (|x| <= {FLOAT32_MAX:.8g}), "
                                   f"got {_show(value)}", name)
    top = MAX_TIMEOUT_S if name == "timeout" else FLOAT32_MAX
    if name in ("duration", "timeout") and not 0 < value <= top:
        raise _bad("out_of_range", f"{name} must be in (0, {top:.8g}] seconds, got {_show(value)}",
                   name)


def parse_body(body) -> dict:
    """The generation parameters of a decoded JSON body, or a 400 GatewayError naming the
    field. The profile's own ranges are the server's to check (one source of truth)."""
    if not isinstance(body, dict):
        raise _bad("invalid_body", f"the body must be a JSON object, got {JSON_TYPES[type(body)]}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise _bad("unknown_parameter", f"unknown fields {unknown}; allowed: {sorted(FIELDS)}",
                   unknown[0])
    if "prompt" not in body:
        raise _bad("missing_parameter", "prompt is required", "prompt")
    for name, value in body.items():
        check_field(name, value)
    params = dict(body)
    if "duration" in params:
        if "num_frames" in params:
            raise _bad("conflicting_parameters", "give duration or num_frames, not both",
                       "duration")
        if "fps" not in params:
            raise _bad("missing_parameter",
                       "duration needs fps (frames = nearest 4k+1 to duration x fps)", "fps")
        duration = params.pop("duration")
        params["num_frames"] = frames_for(duration, params["fps"])
        if params["num_frames"] > INT32_MAX:
            raise _bad("out_of_range", f"duration {_show(duration)} s at {params['fps']} fps "
                                       f"is more than {INT32_MAX} frames", "duration")
    return params


def error_response(status: int, code: str, message: str, param: str | None, request_id: str,
                   headers: dict | None = None) -> web.Response:
    body = {"error": {"code": code, "message": message, "param": param, "request_id": request_id}}
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """A request id for every request (X-Request-Id on every answer); every error a JSON
    object, aiohttp's own 404/405/413 included; an unexpected exception a logged 500."""
    rid = request[REQUEST_ID] = "req_" + uuid.uuid4().hex[:24]
    try:
        response = await handler(request)
    except GatewayError as exc:
        response = error_response(exc.status, exc.code, exc.message, exc.param, rid,
                                  exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            exc.headers["X-Request-Id"] = rid
            raise
        message = {404: f"no such endpoint: {request.method} {request.path}",
                   405: f"{request.method} is not allowed on {request.path}; "
                        f"use {exc.headers.get('Allow')}"}.get(exc.status,
                                                               exc.text or exc.reason)
        code = HTTP_CODES.get(exc.status, exc.reason.lower().replace(" ", "_"))
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = error_response(exc.status, code, message, None, rid, allow)
    except Exception:
        log.exception("request %s (%s %s) failed", rid, request.method, request.path)
        response = error_response(500, "internal_error", "the gateway failed on this request; "
                                  f"quote request id {rid} when reporting it", None, rid)
    response.headers["X-Request-Id"] = rid
    return response


def _param_named(message: str) -> str | None:
    """The field a server message is about: they start with its name ("width must be ...")."""
    first = message.split(" ", 1)[0]
    return first if first in FIELDS else None


def make_app(url: str, *, default_timeout: float | None = 600.0) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
    install(app, url, default_timeout=default_timeout)
    return app


def install(app: web.Application, url: str, *, default_timeout: float | None = 600.0,
            healthz: bool = True) -> None:
    """POST /t2v/generate (and GET /healthz) on `app`, with its gRPC client to `url`; the
    jobs service (t2vserve.jobs.api) mounts the same route."""

    default_rules()  # a broken rule file stops the start, naming file and line

    async def startup(app):
        app[CLIENT] = AsyncT2VClient(url)

    async def cleanup(app):
        await app[CLIENT].close()

    async def generate(request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            raise GatewayError(415, "unsupported_media_type",
                               f"the body must be application/json, got {request.content_type}")
        raw = await request.read()  # HTTPRequestEntityTooLarge past MAX_BODY_BYTES
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, deep nesting
            raise _bad("invalid_json", f"the body is not valid JSON: {exc}")
        params = parse_body(body)
        prompt, timeout = params.pop("prompt"), params.pop("timeout", default_timeout)
        check = comply(prompt)
        prompt = check.prompt
        try:
            video = await app[CLIENT].generate(prompt, timeout=timeout, **params)
        except T2VError as exc:  # first: the client's InvalidRequest is a ValueError too
            status, code = UPSTREAM.get(exc.status, (502, "upstream_error"))
            raise GatewayError(status, code, exc.message,
                               _param_named(exc.message) if status == 400 else None)
        except ValueError as exc:  # the client's own checks
            raise _bad("invalid_request", str(exc))
        headers = {"X-T2V-QC": json.dumps(video.qc),
                   "X-T2V-Info": json.dumps({k: video.info.get(k) for k in
                                             ("model", "variant", "stages_ms", "cache_hit")})}
        headers["X-T2V-Compliance"] = check.header()
        return web.Response(body=video.mp4, content_type="video/mp4", headers=headers)

    async def health(request: web.Request) -> web.Response:
        try:
            ready = await app[CLIENT].client.is_server_ready()
        except Exception:
            ready = False
        return web.json_response({"ready": bool(ready)}, status=200 if ready else 503)

    app.router.add_post("/t2v/generate", generate)
    if healthz:
        app.router.add_get("/healthz", health)
    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)




def serve(url: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    print(f"gateway on http://{host}:{port}/t2v/generate -> Triton gRPC {url}", flush=True)
    web.run_app(make_app(url), host=host, port=port, print=None)
