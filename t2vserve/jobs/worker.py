"""The jobs worker (`t2vserve jobs-worker`): Dramatiq actors that turn queued jobs into clips.

Why Dramatiq on Redis: its Redis broker keeps a worker's unacknowledged messages under that
worker's heartbeat, and any other worker requeues them once the heartbeat is older than
`heartbeat_timeout`. A `kill -9`'d worker's job therefore comes back after a few seconds
whatever the clip's length (measured here: 4.9 s), and a long clip on a live worker is never
handed out twice. Celery's Redis transport instead redelivers after a visibility timeout that
must exceed the longest clip (a shorter one ran an 8 s task twice). Either way delivery is at
least once; the job record (records.py) makes the effect exactly once.

One job, one actor call:
  claim (attempt n) -> resolve the request against the server's defaults and model id ->
  the hash cache (a completed job with the same content: copy its clip, no GPU work) or
  generate through `t2v_stream`, writing progress into the record after every step and
  cancelling the gRPC stream when the record says `cancelled` -> store the MP4 under the
  job's own key -> complete (only from in_progress) -> the webhook.
"""

import hashlib
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from t2vserve.client.core import (Cancelled, InvalidRequest, RetryPolicy, T2VClient, T2VError,
                                  Video, frames_for)
from t2vserve.jobs import webhooks
from t2vserve.jobs.records import Records, content_hash, content_key, now, public_job
from t2vserve.jobs.storage import Storage, storage_from_url

log = logging.getLogger(__name__)

NAMESPACE = "t2v-dramatiq"
QUEUES = {"high": ("videos-high", 0), "normal": ("videos", 10)}  # name, worker-side priority
# a job's actor may run this long (the longest clip, queueing included) before Dramatiq stops it
JOB_TIME_LIMIT_MS = 2 * 3600 * 1000
# an unexpected exception (Redis briefly gone while finishing, say) retries the whole actor,
# which is idempotent; a job's own failures (bad request, server error) are recorded instead
ACTOR_RETRIES = 5
# a running job's lease: renewed every LEASE_S / 5 while its worker lives. A second delivery
# of a job whose lease is live (Redis restarted and took a live worker for dead) waits for
# the lease instead of running the job again; a dead worker's job is claimed after it lapses.
LEASE_S = 10.0
# the request fields that reach the generator (the rest is the service's)
GENERATION_FIELDS = ("negative_prompt", "width", "height", "num_frames", "fps", "steps",
                     "guidance_scale", "seed", "model_variant")


@dataclass
class ServerSpec:
    url: str
    concurrency: int = 2

    @classmethod
    def parse(cls, text: str) -> "ServerSpec":
        """`host:port` or `host:port=N` (N concurrent generations on that server)."""
        url, _, n = text.partition("=")
        if not url:
            raise ValueError(f"a server is host:port[=concurrency], got {text!r}")
        try:
            concurrency = int(n) if n else 2
        except ValueError:
            raise ValueError(f"concurrency must be an integer, got {n!r} in {text!r}") from None
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency} in {text!r}")
        return cls(url, concurrency)


@dataclass
class WorkerConfig:
    redis_url: str = "redis://127.0.0.1:6379/0"
    storage_url: str = "build/jobs/storage"
    servers: list[ServerSpec] = field(default_factory=lambda: [ServerSpec("127.0.0.1:8001")])
    heartbeat_timeout_ms: int = 5000
    webhook_secret: bytes = b""
    allow_private_webhooks: bool = False
    webhook_attempts: int = 5
    webhook_backoff_s: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    generation_timeout_s: float = 3600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


def make_broker(redis_url: str, heartbeat_timeout_ms: int = 5000) -> RedisBroker:
    """The broker both the API (to enqueue) and the workers use. Maintenance (requeueing a
    dead worker's messages) runs on about one command in ten, so a dead worker's job is back
    within a few seconds of its heartbeat timing out."""
    return RedisBroker(url=redis_url, namespace=NAMESPACE, heartbeat_timeout=heartbeat_timeout_ms,
                       maintenance_chance=100_000)


class JobQueue:
    """The two queues (high and normal priority) and the actor that runs a job by id."""

    def __init__(self, broker: RedisBroker, run: Callable[[str], None] | None = None):
        self.broker = broker
        self._run = run

        def generate_video(job_id: str) -> None:
            if self._run is None:
                raise RuntimeError("this process only enqueues jobs (no runner)")
            self._run(job_id)

        self.actors = {
            level: dramatiq.actor(generate_video, broker=broker, actor_name=f"generate_{level}",
                                  queue_name=queue, priority=prio, max_retries=ACTOR_RETRIES,
                                  min_backoff=1000, max_backoff=30_000,
                                  time_limit=JOB_TIME_LIMIT_MS)
            for level, (queue, prio) in QUEUES.items()}

    def enqueue(self, job_id: str, priority: str = "normal", delay_ms: int | None = None) -> None:
        self.actors[priority].send_with_options(args=(job_id,), delay=delay_ms)

    def depth(self) -> dict[str, int]:
        """Messages waiting per queue (not yet fetched by a worker)."""
        return {level: int(self.broker.do_qsize(queue)) for level, (queue, _) in QUEUES.items()}


class _Server:
    def __init__(self, spec: ServerSpec, retry: RetryPolicy):
        self.spec = spec
        self.client = T2VClient(spec.url, retry=retry)
        self.busy = 0
        self._info: dict | None = None
        self._info_at = 0.0

    def info(self) -> dict:
        """The server's model ids and request defaults (t2v's config), re-read each minute."""
        if self._info is None or time.monotonic() - self._info_at > 60:
            self._info = self.client.server_info()
            self._info_at = time.monotonic()
        return self._info


class ServerPool:
    """Several Triton servers, each taking at most its `concurrency` generations at once; a
    job takes the server with the most free slots and waits while all are full."""

    def __init__(self, specs: list[ServerSpec], retry: RetryPolicy):
        self.servers = [_Server(s, retry) for s in specs]
        self._cond = threading.Condition()

    def acquire(self, avoid: _Server | None = None) -> _Server:
        with self._cond:
            while True:
                free = [s for s in self.servers if s.busy < s.spec.concurrency]
                if avoid is not None and len(free) > 1:
                    free = [s for s in free if s is not avoid] or free
                if free:
                    best = max(free, key=lambda s: s.spec.concurrency - s.busy)
                    best.busy += 1
                    return best
                self._cond.wait()

    def release(self, server: _Server) -> None:
        with self._cond:
            server.busy -= 1
            self._cond.notify()


def resolve(request: dict, info: dict) -> dict:
    """The request with the server's defaults filled in and its model id: what the content
    hash covers. `seconds` becomes num_frames at the request's (or default) fps."""
    defaults = info.get("request_defaults") or {}
    model_ids = info.get("model_ids") or {}
    out = {name: request.get(name, defaults.get(name)) for name in GENERATION_FIELDS}
    out["prompt"] = request["prompt"]
    if out["negative_prompt"] is None:
        out["negative_prompt"] = defaults.get("negative_prompt", "")
    if request.get("seconds") is not None and request.get("num_frames") is None:
        out["num_frames"] = frames_for(request["seconds"], out["fps"])
    variant = request.get("model_variant") or next(iter(model_ids), None)
    out["model_variant"] = variant
    out["model"] = model_ids.get(variant) if variant else None
    return out


class JobRunner:
    """What a worker process does with one job id (the actor's body)."""

    def __init__(self, config: WorkerConfig, records: Records | None = None,
                 storage: Storage | None = None):
        self.config = config
        self.records = records or Records(config.redis_url)
        self.storage = storage or storage_from_url(config.storage_url)
        self.pool = ServerPool(config.servers, config.retry)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.queue: JobQueue | None = None  # set by run_worker: re-sends leased duplicates
        self._running: set[str] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._renew_leases, name="leases", daemon=True).start()

    def _renew_leases(self) -> None:
        while True:
            time.sleep(LEASE_S / 5)
            with self._lock:
                running = list(self._running)
            if running:
                try:
                    self.records.renew(running, self.name, LEASE_S)
                except Exception as exc:
                    log.warning("leases not renewed (%s)", exc)

    # -- the actor body
    def run(self, job_id: str) -> None:
        status = self.records.status(job_id)
        if status not in ("queued", "in_progress"):  # finished (a redelivery), or deleted
            job = self.records.get(job_id) if status else None
            if job and (job.get("webhook") or {}).get("state") == "pending":
                self._notify(job_id)  # the worker that finished it died before delivering
            return
        server = self.pool.acquire()  # a free generation slot first: `in_progress` is true
        try:
            attempt = self.records.claim(job_id, self.name, LEASE_S)
            if attempt == 0:  # cancelled while waiting for the slot
                return
            if attempt == -1:  # running on a live worker: look again when its lease could end
                if self.queue is not None:
                    self.queue.enqueue(job_id, (self.records.get(job_id) or {}).get(
                        "priority", "normal"), delay_ms=int(LEASE_S * 1000))
                return
            if attempt > 1:
                log.warning("job %s: attempt %d (an earlier attempt's worker stopped)",
                            job_id, attempt)
            job = self.records.get(job_id)
            assert job is not None
            with self._lock:
                self._running.add(job_id)
            try:
                server = self._generate(job_id, job, server)
            except InvalidRequest as exc:
                self._fail(job_id, "invalid_request", exc.message)
            except Cancelled as exc:
                if self.records.status(job_id) != "cancelled":
                    self._fail(job_id, "cancelled_upstream", exc.message)
            except T2VError as exc:
                self._fail(job_id, exc.status.lower(), exc.message)
            finally:
                with self._lock:
                    self._running.discard(job_id)
        finally:
            self.pool.release(server)

    def _fail(self, job_id: str, code: str, message: str) -> None:
        job = self.records.get(job_id) or {}
        webhook = job.get("webhook")
        fields: dict[str, Any] = {"error": {"code": code, "message": message}}
        if webhook:
            fields["webhook"] = {**webhook, "state": "pending", "event": "video.failed"}
        if self.records.finish(job_id, "failed", **fields) and webhook:
            self._notify(job_id)

    def _generate(self, job_id: str, job: dict, server: _Server) -> _Server:
        """Generate (or copy from the cache) and store; returns the server slot it holds
        (an UNAVAILABLE server is swapped for another with a retry)."""
        request = job["request"]
        for attempt in range(self.config.retry.attempts):
            try:
                resolved = resolve(request, server.info())
                digest = content_hash(resolved)
                if self._from_cache(job_id, digest):
                    return server
                video = self._stream(job_id, server, job, resolved)
                break
            except T2VError as exc:
                if not exc.retryable or attempt + 1 == self.config.retry.attempts:
                    raise
                log.warning("job %s: %s on %s, retrying", job_id, exc.status, server.spec.url)
                self.pool.release(server)
                time.sleep(self.config.retry.delay(attempt))
                server = self.pool.acquire(avoid=server)
        if video is not None:  # None: cancelled
            self._store(job_id, video, digest)
        return server

    def _from_cache(self, job_id: str, digest: str) -> bool:
        source = self.records.cached(digest)
        if source is None or source["id"] == job_id:
            return False
        try:
            self.storage.copy(content_key(source["id"]), content_key(job_id))
        except KeyError:
            return False  # its object went away; generate
        content = dict(source["content"] or {})
        content["key"] = content_key(job_id)
        self._complete(job_id, digest, model=source.get("model"), served=source["served"],
                       qc=source["qc"], content=content,
                       cache={"hit": True, "source": source["id"]},
                       progress=source.get("progress"), info=source.get("info"))
        self.records.count("cache_hits")
        return True

    def _stream(self, job_id: str, server: _Server, job: dict, resolved: dict) -> Video | None:
        params = {name: resolved[name] for name in GENERATION_FIELDS}
        priority = 1 if job.get("priority") == "high" else 0
        started = time.monotonic()
        stream = server.client.generate_stream(job["request"]["prompt"], priority=priority,
                                               timeout=self.config.generation_timeout_s,
                                               request_id=job_id, **params)
        video = None
        try:
            for event in stream:
                if isinstance(event, Video):
                    video = event
                    continue
                progress = {"step": event.step, "steps": event.steps,
                            "percent": round(100.0 * event.step / max(event.steps, 1), 1)}
                try:
                    self.records.set_fields(job_id, progress=progress)
                    cancelled = self.records.status(job_id) in ("cancelled", None)
                except Exception as exc:  # Redis away for a moment: the clip goes on
                    log.warning("job %s: progress not recorded (%s)", job_id, exc)
                    cancelled = False
                if cancelled:
                    log.info("job %s cancelled at step %d/%d: stopping the generation",
                             job_id, event.step, event.steps)
                    return None
        finally:
            stream.close()  # an unfinished stream cancels the request on the server
        if video is not None:
            self.records.count("generate_ms", int((time.monotonic() - started) * 1e3))
        return video

    def _store(self, job_id: str, video: Video, digest: str) -> None:
        key = content_key(job_id)
        self.storage.put(key, video.mp4)  # atomic: all of it under the key, or nothing
        content = {"key": key, "bytes": len(video.mp4),
                   "sha256": hashlib.sha256(video.mp4).hexdigest()}
        steps = video.request.get("steps")
        self._complete(job_id, digest, model=video.model, served=video.request, qc=video.qc,
                       content=content, cache={"hit": False, "source": None},
                       progress={"step": steps, "steps": steps, "percent": 100.0},
                       info={k: video.info.get(k) for k in ("stages_ms", "dit_calls",
                                                            "sampling", "variant")})

    def _complete(self, job_id: str, digest: str, **fields: Any) -> None:
        job = self.records.get(job_id) or {}
        webhook = job.get("webhook")
        if webhook:
            fields["webhook"] = {**webhook, "state": "pending", "event": "video.completed"}
        fields["content_hash"] = digest
        fields = {k: v for k, v in fields.items() if v is not None}
        if self.records.finish(job_id, "completed", **fields):
            self.records.remember(digest, job_id)
            if webhook:
                self._notify(job_id)
            return
        # cancelled (or deleted) while finishing: its content goes; another attempt that
        # completed it first wrote this same key, so a completed job keeps it
        if self.records.status(job_id) != "completed":
            self.storage.delete(content_key(job_id))

    # -- webhooks
    def _notify(self, job_id: str) -> None:
        job = self.records.get(job_id)
        if job is None or not job.get("webhook"):
            return
        hook = dict(job["webhook"])
        attempts = list(hook.get("attempts") or [])

        def record(entry: dict) -> None:
            attempts.append(entry)
            self.records.set_fields(job_id, webhook={**hook, "attempts": attempts})

        event_id = f"evt_{job_id}_{hook['event'].split('.')[-1]}"
        payload = {"id": event_id, "type": hook["event"], "created_at": now(),
                   "data": public_job(job)}
        delivered = webhooks.deliver(
            hook["url"], hook["event"], payload, self.config.webhook_secret, delivery_id=event_id,
            attempts=self.config.webhook_attempts, backoff_s=self.config.webhook_backoff_s,
            allow_private=self.config.allow_private_webhooks, record=record)
        self.records.set_fields(job_id, webhook={**hook, "attempts": attempts,
                                                 "state": "delivered" if delivered else "failed"})
        self.records.count("webhooks_delivered" if delivered else "webhooks_failed")


def run_worker(config: WorkerConfig, threads: int | None = None) -> None:
    """A worker process until SIGINT/SIGTERM: `threads` actor threads (default: the servers'
    total concurrency), prefetching no more messages than it has threads."""
    broker = make_broker(config.redis_url, config.heartbeat_timeout_ms)
    runner = JobRunner(config)
    queue = runner.queue = JobQueue(broker, runner.run)
    threads = threads or sum(s.concurrency for s in config.servers)
    worker = dramatiq.Worker(broker, worker_threads=threads)
    worker.queue_prefetch = threads  # a dead worker strands no more than it was running
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    worker.start()
    servers = ", ".join(f"{s.url} x{s.concurrency}" for s in config.servers)
    print(f"jobs worker {os.getpid()}: {threads} threads, queues {sorted(queue.depth())}, "
          f"servers {servers}, storage {config.storage_url}", flush=True)
    stop.wait()
    print("jobs worker: stopping (running jobs finish first)", flush=True)
    worker.stop()
    broker.close()
