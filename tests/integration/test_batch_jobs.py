"""`t2vserve batch --jobs URL` against the real jobs service (Redis, API and workers as
processes, the session's tritonserver): clips, manifest and resume as in the gRPC mode, no
duplicate jobs after a kill, and a refused key stops the run."""

import functools
import hashlib
import http.server
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

from t2vserve.client.batch import sku_seed
from t2vserve.client.batch_jobs import run_batch_jobs
from tests.jobs_fixtures import KEYS, api, jobs  # noqa: F401

CLI = [sys.executable, "-m", "t2vserve.cli"]
SMALL = {"width": 64, "height": 64, "num_frames": 5, "steps": 2}
CATALOG = [{"sku": "J1", "prompt": "a red cup turning on a wooden table", **SMALL},
           {"sku": "J2", "name": "Insulated bottle", "color": "silver", "material": "steel",
            **SMALL},  # a listing: the prompt is made from its fields, as in the gRPC mode
           {"sku": "J3", "prompt": "a white sneaker on a rock", **SMALL, "seed": 7}]


def _cli(catalog, out, *extra):
    return [*CLI, "batch", str(catalog), "--out-dir", str(out), *extra]


def _env(key):
    env = {k: v for k, v in os.environ.items() if k != "T2V_API_KEY"}
    if key is not None:
        env["T2V_API_KEY"] = key
    return env


def _job_ids(url):
    page = api(url, "/v1/videos", params={"limit": 100}).json()
    assert not page["has_more"]
    return {v["id"] for v in page["data"]}


def _state(out):
    state = {}
    for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        state[record["sku"]] = record
    return state


def test_catalog_through_the_jobs_api_resumes_without_duplicate_jobs(jobs, server, tmp_path):
    catalog, out = tmp_path / "catalog.jsonl", tmp_path / "videos"
    catalog.write_text("\n".join(json.dumps(x) for x in CATALOG) + "\n", encoding="utf-8")
    before = _job_ids(jobs.url)
    cmd = _cli(catalog, out, "--jobs", jobs.url, "--concurrency", "2")

    # A first run killed once its jobs are created, before it has recorded them all.
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(cmd, env=_env(KEYS["alice"]), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while len(_job_ids(jobs.url) - before) < 3 and proc.poll() is None:
            assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        log.close()
    created = _job_ids(jobs.url) - before
    assert len(created) == 3, (tmp_path / "first.log").read_text()

    # The rerun gets the same three jobs back by Idempotency-Key and finishes the catalog.
    left = 3 - (len(_state(out)) if (out / "manifest.jsonl").exists() else 0)
    r = subprocess.run(cmd, env=_env(KEYS["alice"]), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _job_ids(jobs.url) - before == created
    ok, review, failed, done = map(int, re.search(
        r"(\d+) ok, (\d+) for review, (\d+) failed, (\d+) already done", r.stdout).groups())
    assert (ok + review, failed, done) == (left, 0, 3 - left), r.stdout
    assert left == 0 or f"{left}/{left} clips, 0 failed" in r.stderr, r.stderr
    state = _state(out)
    assert set(state) == {"J1", "J2", "J3"}
    for x in state.values():
        assert x["status"] in ("ok", "review") and x["error"] is None, x
        assert x["job_id"] in created and x["idempotency_key"].startswith("t2v-batch-")
        clip = (out / x["path"]).read_bytes()
        assert x["path"] == f"{x['sku']}.mp4" and len(clip) == x["bytes"]
        assert hashlib.sha256(clip).hexdigest() == x["sha256"]
        served = api(jobs.url, f"/v1/videos/{x['job_id']}").json()
        assert served["request"]["prompt"] == x["prompt"] and served["served"]["seed"] == x["seed"]
        assert api(jobs.url, f"/v1/videos/{x['job_id']}/content").content == clip
    assert state["J3"]["seed"] == 7 and "Insulated bottle".lower() in state["J2"]["prompt"].lower()

    # The gRPC mode makes the very same clips from the same catalog.
    grpc_out = tmp_path / "grpc"
    r = subprocess.run(_cli(catalog, grpc_out, "--url", server.grpc_url), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    grpc_state = _state(grpc_out)
    assert {s: x["sha256"] for s, x in grpc_state.items()} == \
        {s: x["sha256"] for s, x in state.items()}

    # Everything done: a third run submits nothing.
    records = (out / "manifest.jsonl").read_text(encoding="utf-8")
    r = subprocess.run([*cmd, "--api-key", KEYS["alice"]], env=_env(None), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "0 ok, 0 for review, 0 failed, 3 already done" in r.stdout, \
        r.stdout + r.stderr
    assert _job_ids(jobs.url) - before == created
    assert (out / "manifest.jsonl").read_text(encoding="utf-8") == records


def test_a_refused_key_stops_the_run(jobs, tmp_path):
    catalog, out = tmp_path / "catalog.jsonl", tmp_path / "videos"
    catalog.write_text(json.dumps({"sku": "W1", "prompt": "a green lamp", **SMALL}) + "\n")
    before = _job_ids(jobs.url)
    r = subprocess.run(_cli(catalog, out, "--jobs", jobs.url), env=_env("not-a-key"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"the jobs API at {jobs.url} refused the API key: invalid_api_key" in r.stderr
    assert "Traceback" not in r.stderr and _job_ids(jobs.url) == before
    assert not (out / "manifest.jsonl").exists() or not (out / "manifest.jsonl").read_text()

    r = subprocess.run(_cli(catalog, out, "--jobs", jobs.url), env=_env(None),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "needs an API key" in r.stderr, r.stderr


class _FlakyJobsApi(http.server.BaseHTTPRequestHandler):
    """A jobs API on loopback that answers a job's first POST 429 (Retry-After: 1), its
    second 503 (but not for a prompt that fails), then creates it; a job is in_progress on its first GET, then completed (failed
    when its prompt says so); the first download of a clip is corrupt."""
    posts: list = []
    made: dict = {}
    downloads: Counter = Counter()
    CLIP = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8
    QC = {"black_frame_ratio": 0.0, "frozen_frame_ratio": 0.0, "temporal_flicker": 0.0}

    def log_message(self, *args):
        pass

    def _send(self, status, body, headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = self.headers["Idempotency-Key"]
        self.posts.append((time.monotonic(), key, body))
        tries = sum(k == key for _, k, _ in self.posts)
        if "fails" not in body["prompt"] and tries == 1:
            return self._send(429, {"error": {"code": "rate_limited", "message": "slow"}},
                              [("Retry-After", "1")])
        if "fails" not in body["prompt"] and tries == 2:
            return self._send(503, {"error": {"code": "unavailable", "message": "busy"}})
        job_id = "video_" + hashlib.sha256(key.encode()).hexdigest()[:32]
        self.made.setdefault(job_id, {"gets": 0, "fails": "fails" in body["prompt"]})
        self._send(202, {"id": job_id, "status": "queued"})

    def do_GET(self):
        job_id = self.path.split("/")[3]
        job = self.made[job_id]
        if self.path.endswith("/content"):
            self.downloads[job_id] += 1
            return self._send(200, self.CLIP[:-1] + b"x" if self.downloads[job_id] == 1
                              else self.CLIP)
        job["gets"] += 1
        if job["gets"] == 1:
            return self._send(200, {"id": job_id, "status": "in_progress"})
        if job["fails"]:
            return self._send(200, {"id": job_id, "status": "failed", "error": {
                "code": "invalid_request", "message": "the server said no"}})
        self._send(200, {"id": job_id, "status": "completed", "qc": self.QC, "content": {
            "bytes": len(self.CLIP), "sha256": hashlib.sha256(self.CLIP).hexdigest()}})


def test_retries_resubmits_and_checked_downloads(tmp_path):
    """429 waits for Retry-After, 503 is retried under the same key, a corrupt download is
    fetched again, a failed job is recorded and sent again on the next run under a new key."""
    for seen in (_FlakyJobsApi.posts, _FlakyJobsApi.made, _FlakyJobsApi.downloads):
        seen.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FlakyJobsApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    catalog, out = tmp_path / "catalog.jsonl", tmp_path / "videos"
    catalog.write_text(json.dumps({"sku": "G1", "prompt": "a red cup", **SMALL}) + "\n" +
                       json.dumps({"sku": "F1", "prompt": "this one fails", **SMALL}) + "\n")
    run = functools.partial(run_batch_jobs, catalog, out, jobs_url=url, api_key="k",
                            concurrency=1, poll_s=0.05, stream=io.StringIO())
    try:
        summary = run()
        assert (summary["ok"], summary["failed"]) == (1, 1), summary
        posts = _FlakyJobsApi.posts
        g1 = [(t, k) for t, k, b in posts if b["prompt"] == "a red cup"]
        assert len(g1) == 3 and g1[1][0] - g1[0][0] >= 0.95  # Retry-After: 1 was waited for
        assert g1[0][1] == g1[1][1] == g1[2][1]  # the same job on every retry
        state = _state(out)
        good, bad = state["G1"], state["F1"]
        assert (out / "G1.mp4").read_bytes() == _FlakyJobsApi.CLIP and good["status"] == "ok"
        assert _FlakyJobsApi.downloads[good["job_id"]] == 2  # the corrupt one was refused
        assert bad["error"] == ("line 2 (sku F1): invalid_request: the server said no "
                                f"(job {bad['job_id']} failed)") and bad["resubmit"] is True
        body = next(b for _, _, b in posts if b["prompt"] == "a red cup")
        assert body == {"prompt": "a red cup", "seed": sku_seed("G1"), **SMALL}

        summary = run()  # G1 is done; F1 goes again, under a fresh key (a new job)
        assert (summary["skipped"], summary["failed"]) == (1, 1), summary
        keys = [k for _, k, b in posts if b["prompt"] == "this one fails"]
        assert len(keys) == 2 and keys[1] == keys[0] + ".1"
        assert _state(out)["F1"]["job_id"] != bad["job_id"]
    finally:
        server.shutdown()
