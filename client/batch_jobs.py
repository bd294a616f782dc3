"""`t2vserve batch --jobs URL`: the catalog, plan, progress line and manifest of the gRPC mode
(batch.py), with the clips made by the jobs service (`t2vserve jobs`, POST /v1/videos).

Each clip to make is one job, sent with the prompt, seed and parameters the gRPC mode would
send (so the clip is the same), under an Idempotency-Key made from the SKU and that request:
a rerun after a crash gets back the jobs it had created (the API replays a key for 24 h)
instead of making new ones. A job that ended failed or cancelled, whose content is gone, or
whose key the service holds for another request is recorded with `resubmit`; the next run
sends that SKU under a fresh key. The run polls its jobs, downloads each finished clip,
checks it against the size and sha256 the job gives, and writes and records it as the gRPC
mode does, with the job id.
"""

import asyncio
import hashlib
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from t2vserve.client.batch import (Job, Progress, QcPolicy, _end_torn_line, plan_batch,
                                   read_catalog, read_manifest, remove_stale_temps, write_atomic)
from t2vserve.client.core import T2VError, request_params

POLL_S = 0.5           # between two GETs of one job
IN_FLIGHT = 64         # jobs submitted and not finished at once (each polled every POLL_S)
RETRY_S = 120.0        # 5xx and connection errors: how long one request keeps being retried
MAX_RETRY_AFTER = 60.0
DOWNLOAD_TRIES = 3
TERMINAL = ("completed", "failed", "cancelled")


class JobsAuthError(Exception):
    """The jobs API refused the API key (401, 403): nothing more can be done in this run."""


class ApiError(Exception):
    """An answer other than success from the jobs API, after the retries it deserves."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.status, self.code, self.message = status, code, message


def _api_error(status: int, data: bytes) -> ApiError:
    try:
        err = json.loads(data)["error"]
        return ApiError(status, str(err["code"]), str(err["message"]))
    except (ValueError, KeyError, TypeError):
        return ApiError(status, f"http_{status}", data[:200].decode("utf-8", "replace"))


def _backoff(attempt: int) -> float:
    return min(0.25 * 2 ** attempt, 8.0)


class JobsApi:
    """The few calls the batch makes, with the retries each answer calls for: 429 waits for
    its Retry-After, 5xx and connection errors back off (up to RETRY_S), 401/403 stop."""

    def __init__(self, session: aiohttp.ClientSession, url: str, api_key: str,
                 concurrency: int):
        self.session, self.url = session, url.rstrip("/")
        self.auth = {"Authorization": f"Bearer {api_key}"}
        self.slots = asyncio.Semaphore(max(1, concurrency))  # requests at once

    async def call(self, method: str, path: str, body: dict | None = None,
                   headers: dict[str, str] | None = None) -> bytes:
        deadline = time.monotonic() + RETRY_S
        attempt = 0
        while True:
            try:
                async with self.slots:
                    async with self.session.request(method, self.url + path, json=body,
                                                    headers={**self.auth, **(headers or {})}
                                                    ) as r:
                        status, data, retry_after = r.status, await r.read(), \
                            r.headers.get("Retry-After")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                status, problem = 0, f"{type(exc).__name__}: {exc}"
            if 200 <= status < 300:
                return data
            if status:
                err = _api_error(status, data)
                if status in (401, 403):
                    raise JobsAuthError(f"the jobs API at {self.url} refused the API key: {err}")
                if status == 429:  # a rate or active-job limit: wait as told, however long
                    try:
                        wait = min(max(float(retry_after or 1), 0.1), MAX_RETRY_AFTER)
                    except ValueError:
                        wait = 1.0
                    await asyncio.sleep(wait)
                    continue
                if status < 500:
                    raise err
                problem = str(err)
            wait = _backoff(attempt)
            if time.monotonic() + wait > deadline:
                raise ApiError(0, "unavailable", f"{method} {path}: {problem}; "
                                                 f"still failing after {RETRY_S:g} s")
            await asyncio.sleep(wait)
            attempt += 1

    async def json(self, method: str, path: str, body: dict | None = None,
                   headers: dict[str, str] | None = None) -> dict:
        return json.loads(await self.call(method, path, body, headers))


def request_body(job: Job) -> dict:
    """What the gRPC mode would send, as a POST /v1/videos body: the same checks and the
    same duration -> num_frames (request_params), no field left to a different default."""
    params = request_params(**job.params, seed=job.seed)
    return {"prompt": job.prompt, **{k: v for k, v in params.items() if v is not None}}


def idempotency_key(job: Job, body: dict, resubmits: Counter) -> str:
    blob = json.dumps({"sku": job.sku, **body}, sort_keys=True, ensure_ascii=False)
    base = "t2v-batch-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]
    n = resubmits[base]
    return base if n == 0 else f"{base}.{n}"


def count_resubmits(manifest: Path) -> Counter:
    """Per key base: how many of its jobs ended so that the same key cannot give a clip."""
    counts: Counter = Counter()
    if manifest.exists():
        for line in manifest.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("resubmit") and record.get(
                    "idempotency_key"):
                counts[str(record["idempotency_key"]).split(".")[0]] += 1
    return counts


async def _download(api: JobsApi, job_id: str, content: dict) -> bytes:
    for attempt in range(DOWNLOAD_TRIES):
        mp4 = await api.call("GET", f"/v1/videos/{job_id}/content")
        if len(mp4) == content.get("bytes") and \
                hashlib.sha256(mp4).hexdigest() == content.get("sha256"):
            return mp4
        await asyncio.sleep(_backoff(attempt))
    raise ApiError(0, "content_mismatch", f"job {job_id}: the downloaded clip is not the one "
                   f"the job describes ({content.get('bytes')} bytes, sha256 "
                   f"{content.get('sha256')}), {DOWNLOAD_TRIES} tries")


async def make_clip(api: JobsApi, job: Job, out_dir: Path, qc: QcPolicy,
                    resubmits: Counter, timeout: float | None, poll_s: float) -> dict:
    entry = {**job.record(), "job_id": None, "idempotency_key": None}
    t0 = time.monotonic()
    try:
        assert job.prompt is not None and job.path is not None  # plan_batch gives both
        body = request_body(job)
        key = entry["idempotency_key"] = idempotency_key(job, body, resubmits)
        state = await api.json("POST", "/v1/videos", body, {"Idempotency-Key": key})
        job_id = entry["job_id"] = state["id"]
        while state["status"] not in TERMINAL:
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise ApiError(0, "timeout", f"job {job_id} still {state['status']} after "
                                             f"{timeout:g} s (a rerun follows the same job)")
            await asyncio.sleep(poll_s)
            state = await api.json("GET", f"/v1/videos/{job_id}")
        if state["status"] != "completed":
            err = state.get("error") or {}
            entry["resubmit"] = True
            raise ApiError(0, str(err.get("code") or state["status"]),
                           f"{err.get('message') or 'no reason given'} (job {job_id} "
                           f"{state['status']})")
        try:
            mp4 = await _download(api, job_id, state["content"] or {})
        except ApiError as exc:
            entry["resubmit"] = exc.status == 404  # the job holds no content any more
            raise
        await asyncio.to_thread(write_atomic, out_dir / job.path, mp4)
        reasons = (qc.review_reasons(state["qc"]) if state.get("qc")
                   else ["no QC from the jobs service"])
        entry.update(path=job.path, bytes=len(mp4), sha256=hashlib.sha256(mp4).hexdigest(),
                     qc=state.get("qc"), error=None, status="review" if reasons else "ok",
                     review=reasons, cache_hit=bool(state.get("cache_hit")))
    except (ApiError, T2VError, ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, ApiError) and exc.code == "idempotency_key_reused":
            entry["resubmit"] = True  # the service holds this key for another request
        entry["error"] = f"line {job.line} (sku {job.sku}): {exc}"
    entry["latency_s"] = round(time.monotonic() - t0, 3)
    return entry


def run_batch_jobs(catalog: Path, out_dir: Path, *, jobs_url: str, api_key: str,
                   concurrency: int = 4, in_flight: int = IN_FLIGHT,
                   timeout: float | None = None, qc: QcPolicy = QcPolicy(),
                   stream=sys.stderr, poll_s: float = POLL_S) -> dict:
    """As run_batch, through the jobs API at `jobs_url` (http://host:port). `concurrency`:
    HTTP requests at once; `in_flight`: jobs submitted and unfinished at once; `timeout`:
    how long one clip may take from its submission. Raises JobsAuthError on 401/403."""
    if not jobs_url.startswith(("http://", "https://")):
        raise ValueError(f"--jobs takes the API's http(s) URL, got {jobs_url!r}")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / "manifest.jsonl"
    _end_torn_line(manifest_path)
    remove_stale_temps(out_dir)
    jobs = plan_batch(read_catalog(catalog), read_manifest(manifest_path), out_dir)
    resubmits = count_resubmits(manifest_path)

    def record(entry: dict) -> None:
        with open(manifest_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    failed_early = [j for j in jobs if not j.done and j.error is not None]
    to_make = [j for j in jobs if not j.done and j.error is None]
    progress = Progress(len(failed_early) + len(to_make), stream)
    summary: dict[str, Any] = {"skipped": sum(j.done for j in jobs), "ok": 0, "review": 0,
                               "failed": 0}

    async def follow_all() -> None:
        window = asyncio.Semaphore(max(1, in_flight))
        timeouts = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
        async with aiohttp.ClientSession(timeout=timeouts) as session:
            api = JobsApi(session, jobs_url, api_key, concurrency)

            async def one(job: Job) -> dict:
                async with window:
                    return await make_clip(api, job, out_dir, qc, resubmits, timeout, poll_s)

            tasks = [asyncio.create_task(one(job)) for job in to_make]
            try:
                for next_done in asyncio.as_completed(tasks):
                    entry = await next_done
                    record(entry)
                    summary[entry["status"]] += 1
                    progress.update(entry["status"] == "failed")
            finally:  # a refused key stops the run: the other jobs are left to a rerun
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    try:
        for job in failed_early:  # as in the gRPC mode: failures known without a request
            record(job.record())
            summary["failed"] += 1
            progress.update(True)
        if to_make:
            asyncio.run(follow_all())
    finally:
        progress.close()
    summary["manifest"] = str(manifest_path)
    return summary
