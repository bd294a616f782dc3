"""`t2vserve bench jobs`: a burst of jobs through the async jobs service (issue 22, Show 4).

Against one running tritonserver, this starts the jobs service as users run it: its own Redis
(AOF, free loopback port), one `t2vserve jobs` API and N `t2vserve jobs-worker` processes, each
taking one generation at a time on that server. It then submits J small clips over HTTP as fast
as a few client threads can (distinct prompts and seeds, so the hash cache never answers),
waits for all of them, and records per job the queue wait (started_at - created_at), the run
time (finished_at - started_at) and end to end (finished_at - created_at), from the job records
as GET /v1/videos/{id} shows them.

"None duplicated" is checked three ways: every job ran once (attempts == 1), the storage holds
exactly one object per job and no temp file, and the server's `dit` inference count grew by
exactly J times what one job adds (measured on a probe job sent alone first, which also warms
the server up). The last holds only while nothing else uses the server.
"""

import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from t2vserve.serve.server import free_ports

RESULTS_DIR = Path("perf/results")
OWNER, KEY = "bench", "bench-key-0123456789abcdef"
SIZE = (64, 64, 5)
STEPS = 2
SUBMIT_THREADS = 8
T2VSERVE = str(Path(sys.executable).parent / "t2vserve")
PROMPTS = ("a ceramic mug", "a leather handbag", "a pair of running shoes", "a desk lamp",
           "a glass teapot", "a wool scarf", "a wrist watch", "a wooden chair")


@dataclass
class Service:
    """Redis, one API and the workers, as subprocesses."""
    url: str
    redis_url: str
    storage: Path
    work_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def log_tails(self, n: int = 1500) -> str:
        out = []
        for path in sorted(self.work_dir.glob("*.log")):
            out.append(f"--- {path.name}\n{path.read_bytes()[-n:].decode('utf-8', 'replace')}")
        return "\n".join(out)


def _spawn(args: list[str], log: Path, env: dict) -> subprocess.Popen:
    # a session of its own: Ctrl-C reaches the driver only, and its cleanup stops these
    with open(log, "ab") as out:
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _stop(procs: list[subprocess.Popen], timeout_s: float = 10.0) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def jobs_service(grpc_url: str, work_dir: Path, workers: int = 2, jobs: int = 200):
    """The jobs service on `grpc_url` for the duration of the block; a fresh Redis and storage
    under `work_dir` (wiped first)."""
    from t2vserve.jobs import redis_server
    from t2vserve.jobs.local import wait_healthy

    work_dir = Path(work_dir).resolve()
    for name in ("redis", "storage"):
        shutil.rmtree(work_dir / name, ignore_errors=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    redis_port, api_port = free_ports(2)
    env = {**os.environ, "T2V_API_KEYS": f"{OWNER}={KEY}"}
    env.pop("T2V_API_KEY", None)
    env.pop("T2V_WEBHOOK_SECRET", None)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    storage = work_dir / "storage"
    svc = Service(f"http://127.0.0.1:{api_port}", redis_url, storage, work_dir)
    redis_proc = redis_server.start(work_dir / "redis", redis_port, log=work_dir / "redis.log")
    try:
        api_log = work_dir / "api.log"
        # the defaults (600 a minute, 1000 active per key) would throttle a larger burst
        api = _spawn([T2VSERVE, "jobs", "--port", str(api_port), "--redis", redis_url,
                      "--storage", str(storage), "--url", grpc_url,
                      "--rate-per-minute", str(max(600, 2 * jobs)),
                      "--max-active-jobs", str(max(1000, 2 * jobs))], api_log, env)
        svc.procs.append(api)
        for n in range(workers):
            svc.procs.append(_spawn([T2VSERVE, "jobs-worker", "--redis", redis_url,
                                     "--storage", str(storage), "--server", f"{grpc_url}=1"],
                                    work_dir / f"worker{n}.log", env))
        wait_healthy(svc.url, api, api_log, timeout_s=60.0)
        yield svc
    finally:
        _stop(svc.procs)
        _stop([redis_proc])


# the client side ---------------------------------------------------------------------------

_local = threading.local()


def _session() -> requests.Session:
    if not hasattr(_local, "session"):
        _local.session = requests.Session()
        _local.session.headers["Authorization"] = f"Bearer {KEY}"
    return _local.session


def job_body(i: int, size=SIZE, steps: int = STEPS, guidance: float | None = None) -> dict:
    """Job i's request: its own prompt and seed, so no two share a content hash."""
    body = {"prompt": f"{PROMPTS[i % len(PROMPTS)]} on a white background, product shot {i}",
            "size": f"{size[0]}x{size[1]}", "num_frames": size[2], "steps": steps,
            "seed": 1000 + i}
    if guidance is not None:
        body["guidance_scale"] = guidance
    return body


def submit(url: str, body: dict) -> dict:
    r = _session().post(url + "/v1/videos", json=body, timeout=60)
    if r.status_code != 202:
        raise RuntimeError(f"POST /v1/videos answered {r.status_code}: {r.text[:500]}")
    return r.json()


def get_job(url: str, job_id: str) -> dict:
    r = _session().get(f"{url}/v1/videos/{job_id}", timeout=60)
    r.raise_for_status()
    return r.json()


def finished_count(url: str) -> int:
    """Jobs completed, failed or cancelled on this Redis so far (the API's /metrics: one
    request, however many jobs, so waiting does not load the machine)."""
    text = requests.get(url + "/metrics", timeout=30).text
    total = 0
    for line in text.splitlines():
        if line.startswith("t2v_jobs_events_total{") and any(
                f'event="{e}"' in line for e in ("completed", "failed", "cancelled")):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def wait_finished(url: str, target: int, timeout_s: float, log=print,
                  every_s: float = 5.0) -> None:
    t0 = last = time.monotonic()
    while True:
        done = finished_count(url)
        if done >= target:
            return
        now = time.monotonic()
        if now - t0 > timeout_s:
            raise TimeoutError(f"{done}/{target} jobs finished after {timeout_s:.0f} s")
        if now - last >= every_s:
            log(f"  {done}/{target} finished, {now - t0:.0f} s")
            last = now
        time.sleep(0.25)


def dit_inferences(grpc_url: str) -> dict:
    """The DiT's cumulative inference (batch rows) and execution counts on the server."""
    from t2vserve.perf.run import model_statistics

    s = model_statistics(grpc_url)["dit"]
    return {"inference_count": s["inference_count"], "execution_count": s["execution_count"]}


# the figures -------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """The q-th percentile, linear between closest ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no values")
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def spread(values: list[float]) -> dict:
    return {"p50": round(percentile(values, 50), 3), "p95": round(percentile(values, 95), 3),
            "max": round(max(values), 3), "mean": round(statistics.fmean(values), 3)}


def duplicates(jobs: list[dict], storage: Path, extra_ids: set[str], dit_delta: int,
               dit_per_job: int) -> dict:
    """The "none duplicated" evidence for the burst's jobs; `ok` when all of it holds.
    `extra_ids`: other jobs on this storage (the probe)."""
    ids = {j["id"] for j in jobs}
    videos = storage / "videos"
    names = {p.name for p in videos.iterdir()} if videos.is_dir() else set()
    expected = {f"{i}.mp4" for i in ids | extra_ids}
    strays = sorted(names - expected)  # a temp file sits next to its target
    if storage.is_dir():  # and nothing but videos/ belongs at the top
        strays += sorted(p.name for p in storage.iterdir() if p.name != "videos")
    missing = sorted(f"{i}.mp4" for i in ids if f"{i}.mp4" not in names)
    attempts = [j["attempts"] for j in jobs]
    reported = sum(int(((j.get("info") or {}).get("sampling") or {}).get("dit_forwards", 0))
                   for j in jobs)
    out = {
        "jobs": len(jobs), "distinct_ids": len(ids),
        "attempts_max": max(attempts, default=0),
        "jobs_with_attempts_not_1": sum(a != 1 for a in attempts),
        "cache_hits": sum(bool(j.get("cache_hit")) for j in jobs),
        "objects": sum(f"{i}.mp4" in names for i in ids),
        "objects_missing": missing[:10], "stray_files": strays[:10],
        "dit_inferences_per_job": dit_per_job,
        "dit_inferences_expected": dit_per_job * len(jobs),
        "dit_inferences_counted": dit_delta,
        "dit_forwards_reported_by_jobs": reported,
    }
    out["ok"] = (len(ids) == len(jobs) and out["jobs_with_attempts_not_1"] == 0
                 and out["cache_hits"] == 0 and out["objects"] == len(jobs) and not missing
                 and not strays and dit_delta == out["dit_inferences_expected"] == reported)
    return out


def run_burst(grpc_url: str, *, jobs: int = 200, workers: int = 2, size=SIZE,
              steps: int = STEPS, guidance: float | None = None,
              work_dir: Path = Path("build/jobs-burst"), timeout_s: float = 3600.0,
              profile: str | None = None, log=print) -> dict:
    """Start the service on `grpc_url`, send the probe and then the burst, stop the service;
    the result document."""
    from t2vserve.perf.run import device_label, machine

    if jobs < 1 or workers < 1:
        raise ValueError(f"jobs and workers must be >= 1, got {jobs} and {workers}")
    load_before = os.getloadavg()
    with jobs_service(grpc_url, work_dir, workers, jobs) as svc:
        log(f"jobs service: API {svc.url}, {workers} workers on {grpc_url}, Redis "
            f"{svc.redis_url}, logs in {svc.work_dir}")
        try:
            # 1. the probe: one job alone, what it adds to dit's count (and a warm server)
            before = dit_inferences(grpc_url)
            probe = submit(svc.url, job_body(jobs, size, steps, guidance))
            wait_finished(svc.url, 1, 600, log)
            probe = get_job(svc.url, probe["id"])
            if probe["status"] != "completed":
                raise RuntimeError(f"the probe job did not complete: {probe}")
            after = dit_inferences(grpc_url)
            per_job = after["inference_count"] - before["inference_count"]
            log(f"probe job: {probe['finished_at'] - probe['started_at']:.2f} s, "
                f"{per_job} dit inferences")
            # 2. the burst, as fast as the client threads can post
            bodies = [job_body(i, size, steps, guidance) for i in range(jobs)]
            log(f"submitting {jobs} jobs ({size[0]}x{size[1]}x{size[2]}, {steps} steps) "
                f"from {SUBMIT_THREADS} threads")
            t_first = time.time()
            with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
                created = list(pool.map(lambda b: submit(svc.url, b), bodies))
            t_submitted = time.time()
            log(f"  {jobs} submitted in {t_submitted - t_first:.2f} s "
                f"({jobs / (t_submitted - t_first):.1f}/s)")
            wait_finished(svc.url, jobs + 1, timeout_s, log)
            with ThreadPoolExecutor(SUBMIT_THREADS) as pool:
                done = list(pool.map(lambda c: get_job(svc.url, c["id"]), created))
            end = dit_inferences(grpc_url)
            dups = duplicates(done, svc.storage, {probe["id"]},
                              end["inference_count"] - after["inference_count"], per_job)
        except Exception:
            log(svc.log_tails())
            raise
    result = summarise(done, dups, t_first, t_submitted, probe, after, end, jobs=jobs,
                       workers=workers, size=size, steps=steps, guidance=guidance,
                       grpc_url=grpc_url, profile=profile, machine=machine(),
                       device=device_label)
    # other work on the machine shows here (1-minute load averages, CPUs busy)
    result["load_average_1m"] = {"before": round(load_before[0], 2),
                                 "after": round(os.getloadavg()[0], 2)}
    return result


def summarise(done: list[dict], dups: dict, t_first: float, t_submitted: float, probe: dict,
              dit_before: dict, dit_end: dict, *, jobs: int, workers: int, size, steps: int,
              guidance, grpc_url: str, profile, machine: dict, device) -> dict:
    completed = [j for j in done if j["status"] == "completed"]
    waits = [j["started_at"] - j["created_at"] for j in completed]
    runs = [j["finished_at"] - j["started_at"] for j in completed]
    e2e = [j["finished_at"] - j["created_at"] for j in completed]
    last = max((j["finished_at"] for j in done if j["finished_at"]), default=t_submitted)
    span = last - t_first
    execs = dit_end["execution_count"] - dit_before["execution_count"]
    rows = dit_end["inference_count"] - dit_before["inference_count"]
    return {
        "kind": "t2vserve.perf.jobs_burst", "version": 1,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": machine["host"], "device": device(machine), "machine": machine,
        "profile": profile, "server": grpc_url, "model": completed[0]["model"] if completed
        else None,
        "workload": {"jobs": jobs, "workers": workers, "concurrency_per_worker": 1,
                     "width": size[0], "height": size[1], "num_frames": size[2],
                     "steps": steps, "guidance_scale": (completed[0]["served"] or {}).get(
                         "guidance_scale") if completed else guidance,
                     "submit_threads": SUBMIT_THREADS, "distinct_prompts_and_seeds": True},
        "completed": len(completed),
        "failed": sum(j["status"] == "failed" for j in done),
        "other": sum(j["status"] not in ("completed", "failed") for j in done),
        "errors": sorted({json.dumps(j["error"]) for j in done if j.get("error")})[:5],
        "submit": {"seconds": round(t_submitted - t_first, 3),
                   "jobs_per_s": round(jobs / max(t_submitted - t_first, 1e-9), 2)},
        "queue_wait_s": spread(waits) if waits else None,
        "run_s": spread(runs) if runs else None,
        "end_to_end_s": spread(e2e) if e2e else None,
        "span_s": round(span, 3),
        "throughput_jobs_per_s": round(len(completed) / span, 3) if span > 0 else None,
        "probe": {"id": probe["id"], "run_s": round(probe["finished_at"] - probe["started_at"],
                                                     3)},
        "dit_batching": {"inferences": rows, "executions": execs,
                         "mean_batch": round(rows / execs, 3) if execs else None},
        "duplicates": dups,
        "command": " ".join(["t2vserve"] + sys.argv[1:]) if sys.argv else None,
    }


def result_path(result: dict, out_dir: Path = RESULTS_DIR) -> Path:
    host = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in result["host"])
    return Path(out_dir) / f"jobs-burst-{result['created'][:10]}-{host}.json"


def markdown(result: dict) -> str:
    w, m, d = result["workload"], result["machine"], result["duplicates"]

    def row(name: str, s: dict | None) -> str:
        if s is None:
            return f"| {name} | — | — | — | — |"
        return f"| {name} | {s['p50']:.2f} | {s['p95']:.2f} | {s['max']:.2f} | {s['mean']:.2f} |"

    lines = [
        f"# Jobs burst: {w['jobs']} jobs, {w['workers']} workers, one server "
        f"({result['created'][:10]}, {result['host']})", "",
        f"Machine: {result['host']}, {result['device']}, {m.get('memory_gib')} GiB; "
        f"{m.get('os')}. Model: {result['model']} (profile {result['profile'] or 'as served'}), "
        f"tritonserver at {result['server']}.", "",
        f"{w['jobs']} jobs of {w['width']}x{w['height']}x{w['num_frames']}, {w['steps']} steps, "
        f"guidance {w['guidance_scale']}, each with its own prompt and seed, posted to one "
        f"`t2vserve jobs` API from {w['submit_threads']} threads; {w['workers']} "
        f"`t2vserve jobs-worker` processes, one generation at a time each, on one server; "
        f"Redis with AOF fsynced on every write. Times from the job records "
        f"(created, started, finished). One probe job ran alone first (warm-up, and what one "
        f"job adds to dit's count).", "",
        f"**{result['completed']}/{w['jobs']} completed**, {result['failed']} failed, "
        f"{result['other']} neither. Submitted in {result['submit']['seconds']:.2f} s "
        f"({result['submit']['jobs_per_s']:.1f} jobs/s); first submit to last finish "
        f"{result['span_s']:.1f} s: **{result['throughput_jobs_per_s']} jobs/s**.", "",
        "| seconds | p50 | p95 | max | mean |", "| --- | ---: | ---: | ---: | ---: |",
        row("queue wait (started - created)", result["queue_wait_s"]),
        row("run (finished - started)", result["run_s"]),
        row("end to end (finished - created)", result["end_to_end_s"]), "",
        f"Probe job alone: {result['probe']['run_s']:.2f} s. DiT over the burst: "
        f"{result['dit_batching']['inferences']} inferences in "
        f"{result['dit_batching']['executions']} executions (mean batch "
        f"{result['dit_batching']['mean_batch']}).", "",
        f"## None duplicated: {'yes' if d['ok'] else 'NO'}", "",
        f"- attempts: {d['jobs_with_attempts_not_1']} jobs with attempts != 1 (max "
        f"{d['attempts_max']}); cache hits {d['cache_hits']}",
        f"- storage: {d['objects']} objects for {d['jobs']} jobs under `videos/`, missing "
        f"{d['objects_missing'] or 'none'}, stray or temp files {d['stray_files'] or 'none'}",
        f"- dit inference count: +{d['dit_inferences_counted']} over the burst, expected "
        f"{d['jobs']} x {d['dit_inferences_per_job']} (the probe's) = "
        f"{d['dit_inferences_expected']}; the jobs' own `dit_forwards` sum to "
        f"{d['dit_forwards_reported_by_jobs']}", "",
    ]
    if result["errors"]:
        lines += ["Errors: " + "; ".join(result["errors"]), ""]
    load = result.get("load_average_1m")
    if load:
        lines += [f"Machine load (1-minute average, {m.get('cores')} CPUs): {load['before']} "
                  f"before the run, {load['after']} after it (the service's own processes "
                  f"included).", ""]
    if result.get("note"):
        lines += [result["note"], ""]
    lines += [f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def write(result: dict, out_dir: Path = RESULTS_DIR) -> Path:
    path = result_path(result, out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    path.with_suffix(".md").write_text(markdown(result))
    return path
