"""The OpenAPI 3.0 document of the jobs API (GET /openapi.json), written by hand so that it
says exactly what api.py accepts: schemathesis fuzzes the service against it in the tests."""

from typing import Any

from t2vserve.client.gateway import INT32_MAX, INT64_MAX, INT64_MIN, MAX_BODY_BYTES
from t2vserve.jobs.records import STATUSES

_INT32 = {"type": "integer", "minimum": 1, "maximum": INT32_MAX}


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _job_id() -> dict:
    return {"name": "id", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": "^video_[0-9a-f]{32}$"}}


_AUTH_ERRORS = {"401": _error("no API key, or not a valid one"),
                "403": _error("the job belongs to another API key"),
                "404": _error("no such job")}


def document() -> dict[str, Any]:
    create = {
        "type": "object", "additionalProperties": False,
        "description": "Exactly one of prompt or listing. Size as size or width+height; length "
                       "as seconds or num_frames. Unset fields take the server profile's "
                       f"defaults. At most {MAX_BODY_BYTES} bytes.",
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "description": "Chinese or English"},
            "listing": {"type": "object", "description": "a product listing (name required; "
                        "category, features, ...): the prompt is made from its template"},
            "negative_prompt": {"type": "string"},
            "size": {"type": "string", "pattern": "^[0-9]{1,5}x[0-9]{1,5}$",
                     "example": "832x480"},
            "width": _INT32, "height": _INT32,
            "seconds": {"type": "number", "exclusiveMinimum": True, "minimum": 0,
                        "maximum": 60},
            "num_frames": _INT32, "fps": _INT32, "steps": _INT32,
            "guidance_scale": {"type": "number", "minimum": -3.4e38, "maximum": 3.4e38},
            "seed": {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX},
            "priority": {"type": "string", "enum": ["normal", "high"], "default": "normal"},
            "model_variant": {"type": "string", "minLength": 1, "maxLength": 64},
            "webhook_url": {"type": "string", "format": "uri", "maxLength": 2048,
                            "description": "POSTed video.completed / video.failed, signed "
                                           "(T2V-Signature: t=<unix>,v1=<HMAC-SHA256 hex of "
                                           "'<t>.' + body>); private addresses refused"},
        },
    }
    job = {
        "type": "object",
        "required": ["id", "object", "status", "created_at", "request"],
        "properties": {
            "id": {"type": "string"}, "object": {"type": "string", "enum": ["video"]},
            "status": {"type": "string", "enum": list(STATUSES)},
            "created_at": {"type": "number"},
            "started_at": {"type": "number", "nullable": True},
            "finished_at": {"type": "number", "nullable": True},
            "priority": {"type": "string"},
            "model": {"type": "string", "nullable": True},
            "progress": {"type": "object", "nullable": True, "properties": {
                "step": {"type": "integer"}, "steps": {"type": "integer"},
                "percent": {"type": "number"}}},
            "request": {"type": "object", "description": "the request as stored; its "
                        "compliance is the prompt's check (action, rules, hits with spans, "
                        "and the original prompt when it was rewritten)"},
            "served": {"type": "object", "nullable": True},
            "qc": {"type": "object", "nullable": True},
            "error": {"type": "object", "nullable": True, "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}}},
            "attempts": {"type": "integer"}, "cache_hit": {"type": "boolean"},
            "worker": {"type": "string", "nullable": True},
            "cached_from": {"type": "string", "nullable": True},
            "content": {"type": "object", "nullable": True},
            "info": {"type": "object", "nullable": True},
            "webhook": {"type": "object", "nullable": True},
            "idempotency_key": {"type": "string", "nullable": True},
            "deleted": {"type": "boolean"},
        },
    }
    error = {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"},
            "param": {"type": "string", "nullable": True},
            "request_id": {"type": "string"}}}}}
    bearer = [{"bearer": []}]
    return {
        "openapi": "3.0.3",
        "info": {"title": "t2vserve jobs API", "version": "1",
                 "description": "Async text-to-video jobs on a durable queue."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"CreateVideo": create, "Video": job, "Error": error},
        },
        "paths": {
            "/v1/videos": {
                "post": {
                    "operationId": "createVideo", "security": bearer,
                    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                    "schema": {"type": "string", "minLength": 1,
                                               "maxLength": 255}}],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/CreateVideo"}}}},
                    "responses": {
                        "202": {"description": "queued", "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Video"}}}},
                        "200": {"description": "the job this Idempotency-Key made before",
                                "content": {"application/json": {
                                    "schema": {"$ref": "#/components/schemas/Video"}}}},
                        "400": _error("bad input (the message names the field and what is "
                                      "allowed), or compliance_blocked: the message names "
                                      "the rule and the span"),
                        "401": _error("no API key, or not a valid one"),
                        "409": _error("the Idempotency-Key was used for another request"),
                        "413": _error("body too large"), "415": _error("not JSON"),
                        "429": _error("past the key's rate or concurrent-job limit "
                                      "(Retry-After)"),
                        "503": _error("the job store is unavailable"),
                    },
                },
                "get": {
                    "operationId": "listVideos", "security": bearer,
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {
                            "type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                        {"name": "after", "in": "query", "schema": {"type": "string"},
                         "description": "next_cursor of the previous page"},
                        {"name": "status", "in": "query", "schema": {
                            "type": "string", "enum": list(STATUSES)}}],
                    "responses": {
                        "200": {"description": "newest first", "content": {"application/json": {
                            "schema": {"type": "object", "properties": {
                                "object": {"type": "string"},
                                "data": {"type": "array", "items": {
                                    "$ref": "#/components/schemas/Video"}},
                                "has_more": {"type": "boolean"},
                                "next_cursor": {"type": "string", "nullable": True}}}}}},
                        "400": _error("bad limit, status or cursor"),
                        "401": _error("no API key, or not a valid one")},
                },
            },
            "/v1/videos/{id}": {
                "parameters": [_job_id()],
                "get": {"operationId": "getVideo", "security": bearer, "responses": {
                    "200": {"description": "the job", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Video"}}}}, **_AUTH_ERRORS}},
                "delete": {"operationId": "deleteVideo", "security": bearer, "responses": {
                    "200": {"description": "cancelled (queued or running) or deleted "
                                           "(finished); its content is deleted",
                            "content": {"application/json": {
                                "schema": {"$ref": "#/components/schemas/Video"}}}},
                    **_AUTH_ERRORS}},
            },
            "/v1/videos/{id}/content": {
                "parameters": [_job_id()],
                "get": {"operationId": "getVideoContent", "security": bearer, "responses": {
                    "200": {"description": "the MP4", "content": {"video/mp4": {
                        "schema": {"type": "string", "format": "binary"}}}},
                    "409": _error("not ready: queued or in progress"),
                    **_AUTH_ERRORS}},
            },
            "/healthz": {"get": {"operationId": "health", "responses": {
                "200": {"description": "Redis reachable", "content": {"application/json": {
                    "schema": {"type": "object"}}}},
                "503": {"description": "Redis unreachable", "content": {"application/json": {
                    "schema": {"type": "object"}}}}}}},
        },
    }
