"""Job records in Redis: the one place that decides what a job is and whether it is done.

The broker (Dramatiq) delivers a job's message at least once; the record makes the effect
exactly once. Every status change is one Lua script, atomic in Redis:

    queued ──claim──▶ in_progress ──complete──▶ completed
       │                  │ └──────fail───────▶ failed
       └──────cancel──────┴───────────────────▶ cancelled

`claim` on a message that is redelivered after a worker died starts attempt n+1 of the same
job; `complete` succeeds only from in_progress, so of two attempts that both finish, one
completes and the other sees `completed` and stops. The stored object's key is the job's own
(`videos/<id>.mp4`), so a second attempt rewrites the same object, never a second one.

Keys (prefix `t2v:`):
  job:<id>                hash: the record (fields below, JSON where structured)
  jobs:<owner>            zset: the owner's jobs by creation time (listing, newest first)
  active:<owner>          set: the owner's queued and running jobs (the concurrency limit)
  idem:<owner>:<sha256>   string: Idempotency-Key -> job id (24 h)
  cache:<sha256>          string: content hash -> the completed job that holds that clip
  rate:<owner>:<minute>   counter: requests per minute per key
  stats                   hash: counters for /metrics
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

PREFIX = "t2v:"
STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled")
ACTIVE = ("queued", "in_progress")
TERMINAL = ("completed", "failed", "cancelled")
IDEMPOTENCY_TTL_S = 24 * 3600
# the fields the content hash covers: the same values give the same clip (determinism)
CONTENT_FIELDS = ("model", "model_variant", "prompt", "negative_prompt", "width", "height",
                  "num_frames", "fps", "steps", "guidance_scale", "seed")
_JSON_FIELDS = ("request", "served", "progress", "error", "qc", "content", "cache", "webhook",
                "info")


def now() -> float:
    return round(time.time(), 3)


def content_hash(values: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of CONTENT_FIELDS (a missing one is null)."""
    canon = json.dumps({k: values.get(k) for k in CONTENT_FIELDS}, sort_keys=True,
                       ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def content_key(job_id: str) -> str:
    return f"videos/{job_id}.mp4"


# ---- the transitions, each atomic -------------------------------------------------------
# KEYS[1] job, KEYS[2] active set; ARGV[1] now, ARGV[2] the worker, ARGV[3] lease end.
# -1: another worker holds a live lease on it (a duplicate delivery: leave it alone)
_CLAIM = """
local s = redis.call('HGET', KEYS[1], 'status')
if s == 'in_progress' then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  if lease > tonumber(ARGV[1]) and redis.call('HGET', KEYS[1], 'worker') ~= ARGV[2] then
    return -1
  end
end
if s == 'queued' or s == 'in_progress' then
  local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  redis.call('HSET', KEYS[1], 'status', 'in_progress', 'updated_at', ARGV[1], 'worker', ARGV[2],
             'lease_until', ARGV[3])
  if not redis.call('HGET', KEYS[1], 'started_at') then
    redis.call('HSET', KEYS[1], 'started_at', ARGV[1])
  end
  return n
end
return 0
"""
# KEYS[1] job, KEYS[2] active set, KEYS[3] stats; ARGV[1] now, ARGV[2] new status,
# ARGV[3..] field/value pairs; moves an in_progress job to a terminal status
_FINISH = """
if redis.call('HGET', KEYS[1], 'status') ~= 'in_progress' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated_at', ARGV[1], 'finished_at', ARGV[1])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SREM', KEYS[2], redis.call('HGET', KEYS[1], 'id'))
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
return 1
"""
# KEYS[1] job, KEYS[2] active set, KEYS[3] stats; ARGV[1] now, ARGV[2] reason
_CANCEL = """
local s = redis.call('HGET', KEYS[1], 'status')
if s ~= 'queued' and s ~= 'in_progress' then return s or '' end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'updated_at', ARGV[1], 'finished_at', ARGV[1],
           'error', ARGV[2])
redis.call('SREM', KEYS[2], redis.call('HGET', KEYS[1], 'id'))
redis.call('HINCRBY', KEYS[3], 'cancelled', 1)
return 'cancelled'
"""


class RateLimited(Exception):
    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Limits:
    """Per API key: requests per minute (POST /v1/videos) and jobs queued or running."""
    per_minute: int = 600
    active_jobs: int = 1000


class Records:
    """The job records on one Redis (`redis://127.0.0.1:6379/0`)."""

    def __init__(self, url: str, retry_s: float = 60.0):
        """`retry_s`: how long a command keeps retrying while Redis is unreachable (a
        restart on its AOF takes about a second): long in workers, so a clip finished during
        a restart is recorded rather than made again; short in the API (a 503 instead)."""
        self.url = url
        tries = max(1, int(retry_s / 0.5))
        self.r = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=2, socket_timeout=10,
            health_check_interval=10, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), tries),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError])
        self._claim = self.r.register_script(_CLAIM)
        self._finish = self.r.register_script(_FINISH)
        self._cancel = self.r.register_script(_CANCEL)

    # -- keys
    @staticmethod
    def _job(job_id: str) -> str:
        return f"{PREFIX}job:{job_id}"

    @staticmethod
    def _active(owner: str) -> str:
        return f"{PREFIX}active:{owner}"

    # -- reading
    def get(self, job_id: str) -> dict | None:
        raw = self.r.hgetall(self._job(job_id))
        if not raw:
            return None
        job: dict[str, Any] = dict(raw)
        for name in _JSON_FIELDS:
            job[name] = json.loads(raw[name]) if name in raw else None
        for name in ("created_at", "updated_at", "started_at", "finished_at"):
            job[name] = float(raw[name]) if name in raw else None
        job["attempts"] = int(raw.get("attempts", 0))
        return job

    def status(self, job_id: str) -> str | None:
        return self.r.hget(self._job(job_id), "status")

    def list(self, owner: str, *, limit: int, after: str | None = None,
             status: str | None = None) -> tuple[list[dict], str | None]:
        """The owner's jobs newest first, `limit` at most, after the cursor; returns them
        and the next page's cursor (None at the end). Equal times order by id, descending,
        so a cursor stays exact when its own job has been deleted since."""
        key = f"{PREFIX}jobs:{owner}"
        cursor = None if after is None else decode_cursor(after)
        top = "+inf" if cursor is None else repr(cursor[0])
        out: list[dict] = []
        offset = 0
        while True:
            chunk = self.r.zrevrangebyscore(key, top, "-inf", start=offset, num=200,
                                            withscores=True)
            if not chunk:
                return out, None
            offset += len(chunk)
            for member, score in chunk:
                if cursor is not None and score == cursor[0] and member >= cursor[1]:
                    continue
                job = self.get(member)
                if job is None or (status and job["status"] != status):
                    continue
                out.append(job)
                if len(out) == limit:
                    return out, encode_cursor(score, member)

    # -- creating
    def check_rate(self, owner: str, limits: Limits) -> None:
        """One more request this minute for the key, or RateLimited with Retry-After."""
        minute = int(time.time() // 60)
        key = f"{PREFIX}rate:{owner}:{minute}"
        pipe = self.r.pipeline()
        pipe.incr(key)
        pipe.expire(key, 120)
        count = pipe.execute()[0]
        if count > limits.per_minute:
            raise RateLimited(f"more than {limits.per_minute} requests a minute for this API key",
                              max(1, 60 - int(time.time() % 60)))
        active = self.r.scard(self._active(owner))
        if active >= limits.active_jobs:
            raise RateLimited(f"this API key already has {active} jobs queued or running "
                              f"(limit {limits.active_jobs})", 5)

    def replayed(self, owner: str, idempotency_key: str) -> dict | None:
        """The job an Idempotency-Key already made, if it still exists."""
        digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()
        job_id = self.r.get(f"{PREFIX}idem:{owner}:{digest}")
        return self.get(job_id) if job_id else None

    def create(self, owner: str, request: dict, *, priority: str, webhook_url: str | None,
               idempotency_key: str | None) -> tuple[dict, bool]:
        """A new queued job, or the one this Idempotency-Key already made (created False)."""
        job_id = "video_" + uuid.uuid4().hex
        idem = None
        if idempotency_key is not None:
            digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()
            idem = f"{PREFIX}idem:{owner}:{digest}"
            if not self.r.set(idem, job_id, nx=True, ex=IDEMPOTENCY_TTL_S):
                existing = self.r.get(idem)
                job = self.get(existing) if existing else None
                if job is not None:
                    return job, False
                self.r.set(idem, job_id, ex=IDEMPOTENCY_TTL_S)  # its job was deleted
        t = now()
        fields = {"id": job_id, "owner": owner, "status": "queued", "created_at": t,
                  "updated_at": t, "priority": priority, "attempts": 0,
                  "request": json.dumps(request, ensure_ascii=False)}
        if webhook_url:
            fields["webhook"] = json.dumps({"url": webhook_url, "state": "none", "attempts": []})
        if idempotency_key is not None:
            fields["idempotency_key"] = idempotency_key
        pipe = self.r.pipeline()
        pipe.hset(self._job(job_id), mapping=fields)
        pipe.zadd(f"{PREFIX}jobs:{owner}", {job_id: t})
        pipe.sadd(self._active(owner), job_id)
        pipe.hincrby(f"{PREFIX}stats", "created", 1)
        pipe.execute()
        job = self.get(job_id)
        assert job is not None
        return job, True

    # -- transitions
    def claim(self, job_id: str, worker: str = "", lease_s: float = 10.0) -> int:
        """Start (or restart) the job on `worker` (host:pid) with a lease of `lease_s`: its
        attempt number; 0 when it is finished or gone; -1 while another worker's lease on
        it is live (the broker handed out a running job twice)."""
        job = self.r.hget(self._job(job_id), "owner")
        if job is None:
            return 0
        return int(self._claim(keys=[self._job(job_id), self._active(job)],
                               args=[now(), worker, now() + lease_s]))

    def finish(self, job_id: str, status: str, **fields: Any) -> bool:
        """in_progress -> completed/failed with `fields`; False if it was not in progress
        (cancelled meanwhile, or another attempt finished it first)."""
        assert status in ("completed", "failed")
        owner = self.r.hget(self._job(job_id), "owner") or ""
        args: list[Any] = [now(), status]
        for name, value in fields.items():
            args += [name, json.dumps(value, ensure_ascii=False) if name in _JSON_FIELDS
                     else value]
        return bool(self._finish(keys=[self._job(job_id), self._active(owner),
                                       f"{PREFIX}stats"], args=args))

    def cancel(self, job_id: str, reason: str = "cancelled by the client") -> str:
        """Cancel a queued or running job; returns the status it has afterwards."""
        owner = self.r.hget(self._job(job_id), "owner") or ""
        error = json.dumps({"code": "cancelled", "message": reason})
        return self._cancel(keys=[self._job(job_id), self._active(owner), f"{PREFIX}stats"],
                            args=[now(), error])

    def renew(self, job_ids: list[str], worker: str, lease_s: float) -> None:
        """Extend this worker's leases on the jobs it is running."""
        pipe = self.r.pipeline()
        for job_id in job_ids:
            pipe.hset(self._job(job_id), "lease_until", now() + lease_s)
        pipe.execute()

    def set_fields(self, job_id: str, **fields: Any) -> None:
        """Progress and other non-status fields; only while the job exists."""
        mapping = {name: json.dumps(value, ensure_ascii=False) if name in _JSON_FIELDS
                   else value for name, value in fields.items()}
        if self.r.exists(self._job(job_id)):
            self.r.hset(self._job(job_id), mapping={**mapping, "updated_at": now()})

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        if job is None:
            return
        pipe = self.r.pipeline()
        pipe.delete(self._job(job_id))
        pipe.zrem(f"{PREFIX}jobs:{job['owner']}", job_id)
        pipe.srem(self._active(job["owner"]), job_id)
        pipe.execute()

    # -- the hash cache
    def cached(self, digest: str) -> dict | None:
        """The completed job holding the clip with this content hash, if it still exists."""
        job_id = self.r.get(f"{PREFIX}cache:{digest}")
        job = self.get(job_id) if job_id else None
        if job is None or job["status"] != "completed":
            if job_id:
                self.r.delete(f"{PREFIX}cache:{digest}")
            return None
        return job

    def remember(self, digest: str, job_id: str) -> None:
        self.r.set(f"{PREFIX}cache:{digest}", job_id, nx=True)

    def count(self, name: str, by: int = 1) -> None:
        self.r.hincrby(f"{PREFIX}stats", name, by)

    def stats(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.r.hgetall(f"{PREFIX}stats").items()}


def encode_cursor(score: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score!r}|{job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """(score, job id) of a cursor from `list`; ValueError for anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        score, job_id = text.split("|", 1)
        value = float(score)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"after is not a cursor this API gave out: {cursor[:40]!r}") from exc
    if not job_id.startswith("video_") or not math.isfinite(value):
        raise ValueError(f"after is not a cursor this API gave out: {cursor[:40]!r}")
    return value, job_id


def public_job(job: dict) -> dict:
    """A record as the API shows it (GET /v1/videos/{id}, webhook payloads)."""
    content = job.get("content")
    cache = job.get("cache") or {}
    webhook = job.get("webhook")
    return {
        "id": job["id"], "object": "video", "status": job["status"],
        "created_at": job["created_at"], "started_at": job.get("started_at"),
        "finished_at": job.get("finished_at"), "priority": job.get("priority", "normal"),
        "model": job.get("model"), "progress": job.get("progress"),
        "request": job["request"], "served": job.get("served"), "qc": job.get("qc"),
        "error": job.get("error"), "attempts": job.get("attempts", 0),
        "worker": job.get("worker"),
        "cache_hit": bool(cache.get("hit")), "cached_from": cache.get("source"),
        "content": None if content is None or job["status"] != "completed" else {
            "url": f"/v1/videos/{job['id']}/content", "bytes": content.get("bytes"),
            "sha256": content.get("sha256")},
        "info": job.get("info"),
        "webhook": None if not webhook else {
            "url": webhook["url"], "state": webhook.get("state", "none"),
            "attempts": webhook.get("attempts", [])},
        "idempotency_key": job.get("idempotency_key"),
    }
