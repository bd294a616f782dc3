"""The jobs front door (`t2vserve jobs`): async video jobs over HTTP, in the OpenAI videos style.

  POST   /v1/videos               202 a queued job (200 when an Idempotency-Key replays one)
  GET    /v1/videos               the caller's jobs, newest first (limit, after, status)
  GET    /v1/videos/{id}          status, progress, error, QC, the request as served, model
  GET    /v1/videos/{id}/content  the MP4 (409 while queued or running, 404 when there is none)
  DELETE /v1/videos/{id}          cancels a queued or running job (the generation stops between
                                  two steps) and deletes its content; a finished job is deleted
  POST   /t2v/generate            the synchronous gateway (t2vserve.client.gateway), same key
  GET    /healthz, /metrics, /openapi.json   (no key)

Every error is the gateway's JSON error object; nothing a client sends gets a 500. The API
only writes records and enqueues; workers (worker.py) generate.
"""

import asyncio
import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from t2vserve.client import gateway
from t2vserve.client.gateway import GatewayError, _bad, _show, _wrong_type, check_field, json_errors
from t2vserve.client.listing import ListingError, listing_to_prompt
from t2vserve.jobs import auth, webhooks
from t2vserve.jobs.records import (STATUSES, Limits, RateLimited, Records, content_key,
                                   public_job)
from t2vserve.jobs.storage import Storage, storage_from_url
from t2vserve.jobs.worker import JobQueue, make_broker

log = logging.getLogger(__name__)

MAX_SECONDS = 60.0
MAX_LISTING_BYTES = 16 * 1024
MAX_IDEMPOTENCY_KEY = 255
PAGE_DEFAULT, PAGE_MAX = 20, 100
_JOB_ID = re.compile(r"^video_[0-9a-f]{32}$")
_SIZE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")
# POST /v1/videos: the body's fields (the generation ones are checked as the gateway does)
GENERATION = ("prompt", "negative_prompt", "width", "height", "num_frames", "fps", "steps",
              "guidance_scale", "seed")
FIELDS = (*GENERATION, "listing", "size", "seconds", "priority", "model_variant", "webhook_url")
PRIORITIES = ("normal", "high")
OWNER = web.RequestKey("owner", str)


@dataclass
class JobsConfig:
    redis_url: str = "redis://127.0.0.1:6379/0"
    storage_url: str = "build/jobs/storage"
    triton_url: str = "127.0.0.1:8001"       # for POST /t2v/generate
    keys: dict[str, str] = field(default_factory=dict)   # sha256 -> owner
    limits: Limits = field(default_factory=Limits)
    webhooks_enabled: bool = False           # a signing secret is configured
    allow_private_webhooks: bool = False
    heartbeat_timeout_ms: int = 5000


@dataclass
class Service:
    config: JobsConfig
    records: Records
    storage: Storage
    queue: JobQueue
    http: Counter = field(default_factory=Counter)


SERVICE = web.AppKey("service", Service)


def _error(status: int, code: str, message: str, param: str | None = None) -> GatewayError:
    return GatewayError(status, code, message, param)


def parse_job(body: Any, *, webhooks_enabled: bool, allow_private: bool) -> tuple[dict, str, str | None]:
    """(the request to store, priority, webhook URL) of a POST /v1/videos body, or a 400."""
    if not isinstance(body, dict):
        raise _bad("invalid_body", f"the body must be a JSON object, got {_show(body)}")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise _bad("unknown_parameter", f"unknown fields {unknown}; allowed: {sorted(FIELDS)}",
                   unknown[0])
    request: dict[str, Any] = {}
    for name in GENERATION:
        if name in body:
            check_field(name, body[name])
            request[name] = body[name]
    if ("prompt" in body) == ("listing" in body):
        raise _bad("missing_parameter" if "prompt" not in body else "conflicting_parameters",
                   "give exactly one of prompt (text) or listing (a product listing object)",
                   "prompt")
    if "prompt" in body and not body["prompt"].strip():
        raise _bad("invalid_value", "prompt is empty", "prompt")
    if "listing" in body:
        listing = body["listing"]
        if not isinstance(listing, dict):
            raise _wrong_type("listing", "an object", listing)
        if len(json.dumps(listing, ensure_ascii=False).encode()) > MAX_LISTING_BYTES:
            raise _bad("invalid_value", f"listing is over {MAX_LISTING_BYTES} bytes", "listing")
        try:
            made = listing_to_prompt(listing, check=False)  # checked below, as a prompt is
        except (ListingError, ValueError, TypeError) as exc:
            raise _bad("invalid_listing", f"listing: {exc}", "listing")
        request["prompt"], request["listing"] = made.prompt, listing
        request["prompt_warnings"] = list(made.warnings)
    # the compliance check: a block is a 400 naming rule and span; the result (a rewrite
    # with its original) is kept in the job's request
    check = gateway.comply(request["prompt"], "listing" if "listing" in body else "prompt")
    request["prompt"], request["compliance"] = check.prompt, check.to_dict()
    if "size" in body:
        size = body["size"]
        if not isinstance(size, str):
            raise _wrong_type("size", 'a string "WIDTHxHEIGHT"', size)
        m = _SIZE.match(size)
        if not m:
            raise _bad("invalid_value", f'size must be "WIDTHxHEIGHT" (e.g. "832x480"), '
                                        f"got {_show(size)}", "size")
        if "width" in body or "height" in body:
            raise _bad("conflicting_parameters", "give size or width/height, not both", "size")
        request["width"], request["height"] = int(m.group(1)), int(m.group(2))
    if "seconds" in body:
        seconds = body["seconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise _wrong_type("seconds", "a number", seconds)
        if not (math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
            raise _bad("out_of_range", f"seconds must be in (0, {MAX_SECONDS:g}], got "
                                       f"{_show(seconds)}", "seconds")
        if "num_frames" in body:
            raise _bad("conflicting_parameters", "give seconds or num_frames, not both",
                       "seconds")
        request["seconds"] = seconds
    priority = body.get("priority", "normal")
    if priority not in PRIORITIES or not isinstance(priority, str):
        raise _bad("invalid_value", f"priority must be one of {list(PRIORITIES)}, got "
                                    f"{_show(priority)}", "priority")
    if "model_variant" in body:
        variant = body["model_variant"]
        if not isinstance(variant, str) or not 0 < len(variant) <= 64:
            raise _wrong_type("model_variant", "a variant name (string, 1-64 characters)",
                              variant)
        request["model_variant"] = variant
    url = body.get("webhook_url")
    if url is not None:
        if not isinstance(url, str) or len(url) > 2048:
            raise _wrong_type("webhook_url", "an http(s) URL string of at most 2048 characters",
                              url)
        if not webhooks_enabled:
            raise _bad("webhooks_disabled", "this service has no webhook signing secret "
                                            "(T2V_WEBHOOK_SECRET); webhook_url is refused",
                       "webhook_url")
        try:
            webhooks.check_url(url, allow_private=allow_private)
        except webhooks.WebhookRefused as exc:
            raise _bad("webhook_refused", str(exc), "webhook_url")
    return request, priority, url


def _int_param(query, name: str, lo: int, hi: int, default: int) -> int:
    if name not in query:
        return default
    text = query[name]
    if not re.fullmatch(r"[0-9]{1,6}", text) or not lo <= int(text) <= hi:
        raise _bad("invalid_value", f"{name} must be an integer in [{lo}, {hi}], got "
                                    f"{_show(text)}", name)
    return int(text)


async def _json_body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise _error(415, "unsupported_media_type",
                     f"the body must be application/json, got {request.content_type}")
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _bad("invalid_json", f"the body is not valid JSON: {exc}")


def _service(request: web.Request) -> Service:
    return request.app[SERVICE]


async def _call(fn, *args, **kwargs):
    """A Redis or storage call off the event loop; Redis down is a 503, not a 500."""
    import redis

    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except redis.RedisError as exc:
        raise _error(503, "unavailable", f"the job store is unavailable: {exc}")


async def _own_job(request: web.Request) -> dict:
    job_id = request.match_info["id"]
    job = await _call(_service(request).records.get, job_id) if _JOB_ID.match(job_id) else None
    if job is None:
        raise _error(404, "not_found", f"no video job {_show(job_id)}", "id")
    if job["owner"] != request[OWNER]:
        raise _error(403, "forbidden", f"video job {job_id} belongs to another API key", "id")
    return job


def _replay(job: dict, job_request: dict, key: str | None) -> web.Response:
    if job["request"] != job_request:
        raise _error(409, "idempotency_key_reused",
                     f"Idempotency-Key {_show(key)} was used for a different request "
                     f"(job {job['id']})", "Idempotency-Key")
    return web.json_response(public_job(job), status=200, headers={"Idempotent-Replayed": "true"})


async def create_video(request: web.Request) -> web.Response:
    svc = _service(request)
    body = await _json_body(request)
    # off the loop: a webhook host name is resolved to check where it points
    job_request, priority, url = await asyncio.to_thread(
        parse_job, body, webhooks_enabled=svc.config.webhooks_enabled,
        allow_private=svc.config.allow_private_webhooks)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isprintable()):
        raise _bad("invalid_value", f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable "
                                    "characters", "Idempotency-Key")
    owner = request[OWNER]
    # a replay is answered before the limits: it creates nothing (a client resuming after a
    # crash is not throttled for asking what it already made)
    job = None if key is None else await _call(svc.records.replayed, owner, key)
    if job is not None:
        return _replay(job, job_request, key)
    try:
        await _call(svc.records.check_rate, owner, svc.config.limits)
    except RateLimited as exc:
        raise GatewayError(429, "rate_limited", str(exc),
                           headers={"Retry-After": str(exc.retry_after)}) from exc
    job, created = await _call(svc.records.create, owner, job_request, priority=priority,
                               webhook_url=url, idempotency_key=key)
    if not created:  # the same key, at the same moment
        return _replay(job, job_request, key)
    try:
        await _call(svc.queue.enqueue, job["id"], priority)
    except GatewayError:
        await asyncio.to_thread(svc.records.delete, job["id"])
        raise
    return web.json_response(public_job(job), status=202,
                             headers={"Location": f"/v1/videos/{job['id']}"})


async def list_videos(request: web.Request) -> web.Response:
    query = request.query
    unknown = sorted(set(query) - {"limit", "after", "status"})
    if unknown:
        raise _bad("unknown_parameter", f"unknown query parameters {unknown}; allowed: "
                                        "['after', 'limit', 'status']", unknown[0])
    limit = _int_param(query, "limit", 1, PAGE_MAX, PAGE_DEFAULT)
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise _bad("invalid_value", f"status must be one of {list(STATUSES)}, got "
                                    f"{_show(status)}", "status")
    try:
        jobs, cursor = await _call(_service(request).records.list, request[OWNER], limit=limit,
                                   after=query.get("after"), status=status)
    except ValueError as exc:
        raise _bad("invalid_cursor", str(exc), "after")
    return web.json_response({"object": "list", "data": [public_job(j) for j in jobs],
                              "has_more": cursor is not None, "next_cursor": cursor})


async def get_video(request: web.Request) -> web.Response:
    return web.json_response(public_job(await _own_job(request)))


async def get_content(request: web.Request) -> web.Response:
    job = await _own_job(request)
    if job["status"] in ("queued", "in_progress"):
        raise _error(409, "not_ready", f"video job {job['id']} is {job['status']}; its content "
                                       "is ready when the status is completed")
    if job["status"] != "completed":
        raise _error(404, "no_content", f"video job {job['id']} is {job['status']}: it has "
                                        "no content")
    try:
        data = await _call(_service(request).storage.get, content_key(job["id"]))
    except KeyError:
        raise _error(404, "no_content", f"the content of video job {job['id']} is gone")
    return web.Response(body=data, content_type="video/mp4", headers={
        "Content-Disposition": f'attachment; filename="{job["id"]}.mp4"'})


async def delete_video(request: web.Request) -> web.Response:
    svc = _service(request)
    job = await _own_job(request)
    if job["status"] in ("queued", "in_progress"):
        status = await _call(svc.records.cancel, job["id"])
        if status == "cancelled":
            await _call(svc.storage.delete, content_key(job["id"]))
            job = await _call(svc.records.get, job["id"]) or job
            return web.json_response({**public_job(job), "deleted": False})
        job = await _call(svc.records.get, job["id"]) or job  # it finished meanwhile
    await _call(svc.storage.delete, content_key(job["id"]))
    await _call(svc.records.delete, job["id"])
    return web.json_response({**public_job(job), "content": None, "deleted": True})


async def healthz(request: web.Request) -> web.Response:
    try:
        ok = bool(await asyncio.to_thread(_service(request).records.r.ping))
    except Exception:
        ok = False
    return web.json_response({"redis": ok}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    svc = _service(request)
    lines = ["# HELP t2v_jobs_events_total Job events by kind (created, completed, failed, "
             "cancelled, cache_hits, webhooks_delivered, webhooks_failed).",
             "# TYPE t2v_jobs_events_total counter"]
    try:
        stats = await asyncio.to_thread(svc.records.stats)
        depth = await asyncio.to_thread(svc.queue.depth)
    except Exception:
        stats, depth = {}, {}
    for name in ("created", "completed", "failed", "cancelled", "cache_hits",
                 "webhooks_delivered", "webhooks_failed"):
        lines.append(f't2v_jobs_events_total{{event="{name}"}} {stats.get(name, 0)}')
    lines += ["# HELP t2v_jobs_queue_depth Messages waiting in each queue.",
              "# TYPE t2v_jobs_queue_depth gauge"]
    lines += [f't2v_jobs_queue_depth{{queue="{q}"}} {n}' for q, n in sorted(depth.items())]
    lines += ["# HELP t2v_jobs_http_requests_total HTTP answers by route and status.",
              "# TYPE t2v_jobs_http_requests_total counter"]
    lines += [f't2v_jobs_http_requests_total{{route="{route}",code="{code}"}} {n}'
              for (route, code), n in sorted(svc.http.items())]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def openapi(request: web.Request) -> web.Response:
    from t2vserve.jobs.openapi import document

    return web.json_response(document())


PUBLIC = ("/healthz", "/metrics", "/openapi.json")


@web.middleware
async def authenticate(request: web.Request, handler) -> web.StreamResponse:
    """Bearer keys on everything but PUBLIC; counts every answer for /metrics."""
    svc = request.app[SERVICE]
    route = request.match_info.route.resource.canonical if request.match_info.route.resource \
        else "unmatched"
    try:
        if request.path not in PUBLIC and request.match_info.route.resource is not None:
            owner = auth.owner_of(request.headers.get("Authorization"), svc.config.keys)
            if owner is None:
                given = "Authorization" in request.headers
                raise GatewayError(401, "invalid_api_key" if given else "missing_api_key",
                                   "the API key is not valid" if given else
                                   "send an API key: Authorization: Bearer <key>")
            request[OWNER] = owner
        response = await handler(request)
    except GatewayError as exc:
        svc.http[(route, exc.status)] += 1
        raise
    svc.http[(route, response.status)] += 1
    return response


def make_app(config: JobsConfig, *, records: Records | None = None,
             storage: Storage | None = None) -> web.Application:
    app = web.Application(client_max_size=gateway.MAX_BODY_BYTES,
                          middlewares=[json_errors, authenticate])
    records = records or Records(config.redis_url, retry_s=3.0)
    app[SERVICE] = Service(config, records, storage or storage_from_url(config.storage_url),
                           JobQueue(make_broker(config.redis_url, config.heartbeat_timeout_ms)))
    app.router.add_post("/v1/videos", create_video)
    app.router.add_get("/v1/videos", list_videos)
    app.router.add_get("/v1/videos/{id}", get_video)
    app.router.add_get("/v1/videos/{id}/content", get_content)
    app.router.add_delete("/v1/videos/{id}", delete_video)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    gateway.install(app, config.triton_url, healthz=False)

    async def close(app):
        app[SERVICE].queue.broker.close()

    app.on_cleanup.append(close)
    return app


def serve(config: JobsConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    if not config.keys:
        raise SystemExit("no API keys: set T2V_API_KEY, T2V_API_KEYS or --keys FILE")
    print(f"jobs API on http://{host}:{port}/v1/videos (OpenAPI: /openapi.json); "
          f"Redis {config.redis_url}, storage {config.storage_url}, "
          f"{len(config.keys)} API key(s)", flush=True)
    web.run_app(make_app(config), host=host, port=port, print=None)


def keys_from(path: Path | None) -> dict[str, str]:
    return auth.load_keys(path)
