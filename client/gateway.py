"""HTTP shim for platforms that integrate over plain HTTP (`t2vserve gateway`).

POST /t2v/generate  JSON {prompt, width, height, duration, fps, seed, guidance_scale, ...}
  200 video/mp4 (QC and stage timings in X-T2V-QC / X-T2V-Info headers)
  400 JSON {"error": ...} for bad input (the server's message names the allowed range)
  503 server busy/unavailable, 504 deadline passed, 502 anything else upstream
GET /healthz  200 when Triton is ready.
Forwards to Triton over gRPC; no model logic here.
"""

import json
import math

from aiohttp import web

from t2vserve.client.core import AsyncT2VClient, T2VDeadlineError, T2VError

MAX_BODY_BYTES = 64 * 1024
FIELDS = {"prompt": str, "negative_prompt": str, "width": int, "height": int,
          "duration": (int, float), "num_frames": int, "fps": int, "steps": int,
          "guidance_scale": (int, float), "seed": int, "timeout": (int, float)}
STATUS = {"INVALID_ARGUMENT": 400, "UNAVAILABLE": 503, "RESOURCE_EXHAUSTED": 503,
          "DEADLINE_EXCEEDED": 504, "CANCELLED": 499}


def _bad(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


def parse_body(body) -> dict:
    """Checks JSON types here; ranges are the server's to check (one source of truth)."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown fields {unknown}; allowed: {sorted(FIELDS)}")
    if "prompt" not in body:
        raise ValueError("prompt is required")
    for name, value in body.items():
        kind = FIELDS[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            allowed = kind.__name__ if isinstance(kind, type) else "number"
            raise ValueError(f"{name} must be a {allowed}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} must be finite")
    return dict(body)


def make_app(url: str, *, default_timeout: float | None = 600.0) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)

    async def startup(app):
        app["client"] = AsyncT2VClient(url)

    async def cleanup(app):
        await app["client"].close()

    async def generate(request: web.Request) -> web.Response:
        try:
            params = parse_body(await request.json())
        except web.HTTPRequestEntityTooLarge:
            return _bad(f"request body over {MAX_BODY_BYTES} bytes", 413)
        except ValueError as exc:  # includes JSONDecodeError
            return _bad(str(exc))
        prompt = params.pop("prompt")
        timeout = params.pop("timeout", default_timeout)
        try:
            video = await app["client"].generate(prompt, timeout=timeout, **params)
        except ValueError as exc:  # e.g. duration without fps
            return _bad(str(exc))
        except T2VDeadlineError as exc:
            return _bad(exc.message, 504)
        except T2VError as exc:
            return _bad(exc.message, STATUS.get(exc.status, 502))
        headers = {"X-T2V-QC": json.dumps(video.qc),
                   "X-T2V-Info": json.dumps({k: video.info.get(k) for k in
                                             ("model", "stages_ms", "cache_hit")})}
        return web.Response(body=video.mp4, content_type="video/mp4", headers=headers)

    async def healthz(request: web.Request) -> web.Response:
        try:
            ready = await app["client"].client.is_server_ready()
        except Exception:
            ready = False
        return web.json_response({"ready": bool(ready)}, status=200 if ready else 503)

    app.router.add_post("/t2v/generate", generate)
    app.router.add_get("/healthz", healthz)
    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    return app


def serve(url: str, host: str = "127.0.0.1", port: int = 8080) -> None:
    print(f"gateway on http://{host}:{port}/t2v/generate -> Triton gRPC {url}", flush=True)
    web.run_app(make_app(url), host=host, port=port, print=None)
