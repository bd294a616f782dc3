"""The jobs service end to end: real Redis (AOF), the session's tritonserver, the API and
workers as the `t2vserve` processes users run, real HTTP."""

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from t2vserve.jobs import webhooks
from t2vserve.media import decode_mp4
from t2vserve.serve.server import free_ports
from tests.jobs_fixtures import (HEARTBEAT_MS, KEYS, SECRET, SMALL, Jobs, api,  # noqa: F401
                                 dit_calls, jobs, new_bucket, s3_server, start_api, submit,
                                 wait_job)

pytestmark = pytest.mark.slow


def test_round_trip_listing_and_content(jobs):
    created = submit(jobs.url, {"prompt": "a red cup rotating on a wooden table", **SMALL,
                                "seed": 11})
    assert created["status"] == "queued" and created["id"].startswith("video_")
    job = wait_job(jobs.url, created["id"])
    assert job["status"] == "completed", job
    assert job["progress"] == {"step": 2, "steps": 2, "percent": 100.0}
    assert job["served"]["num_frames"] == 5 and job["served"]["seed"] == 11
    assert job["model"] and job["qc"] and job["attempts"] == 1 and not job["cache_hit"]
    r = api(jobs.url, f"/v1/videos/{job['id']}/content")
    assert r.status_code == 200 and r.headers["Content-Type"] == "video/mp4"
    frames, fps = decode_mp4(r.content)
    assert frames.shape == (5, 64, 64, 3) and round(fps) == job["served"]["fps"]
    assert job["content"]["bytes"] == len(r.content)
    # another key neither sees nor touches it
    assert api(jobs.url, f"/v1/videos/{job['id']}", key="bob").status_code == 403
    assert api(jobs.url, f"/v1/videos/{job['id']}/content", key="bob").status_code == 403
    assert job["id"] not in [v["id"] for v in api(jobs.url, "/v1/videos", key="bob").json()["data"]]
    # cursor pagination walks every job once, newest first; the status filter filters
    seen, cursor = [], None
    while True:
        page = api(jobs.url, "/v1/videos", params={"limit": 1, **({"after": cursor} if cursor
                                                                    else {})}).json()
        seen += [v["id"] for v in page["data"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert job["id"] in seen and len(seen) == len(set(seen))
    done = api(jobs.url, "/v1/videos", params={"status": "completed", "limit": 100}).json()
    assert all(v["status"] == "completed" for v in done["data"])
    # DELETE of a finished job deletes it and its content
    gone = api(jobs.url, f"/v1/videos/{job['id']}", "DELETE").json()
    assert gone["deleted"] is True
    assert api(jobs.url, f"/v1/videos/{job['id']}").status_code == 404
    assert not (jobs.storage / "videos" / f"{job['id']}.mp4").exists()


def test_cancel_running_job_stops_dit_within_a_step(jobs):
    created = submit(jobs.url, {"prompt": "a blue backpack on a shelf", "size": "128x128",
                                "num_frames": 17, "steps": 50, "seed": 5})
    job = created
    deadline = time.monotonic() + 60
    while not (job["progress"] or {}).get("step", 0) >= 2:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
        job = api(jobs.url, f"/v1/videos/{created['id']}").json()
    assert job["status"] == "in_progress" and job["progress"]["steps"] == 50
    assert api(jobs.url, f"/v1/videos/{job['id']}/content").status_code == 409
    t0 = time.monotonic()
    r = api(jobs.url, f"/v1/videos/{job['id']}", "DELETE")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # the worker sees it at the next step and cancels the gRPC stream; t2v stops at the one
    # after: dit gets no more calls once that has passed
    time.sleep(1.0)
    calls = dit_calls(jobs.grpc_url)
    time.sleep(1.5)
    assert dit_calls(jobs.grpc_url) == calls, "dit still called after the cancel"
    job = api(jobs.url, f"/v1/videos/{job['id']}").json()
    assert job["status"] == "cancelled" and job["progress"]["step"] < 50
    assert api(jobs.url, f"/v1/videos/{job['id']}/content").status_code == 404
    assert time.monotonic() - t0 < 10


def test_idempotency_key_and_hash_cache(jobs):
    body = {"prompt": "a green teapot, studio light", **SMALL, "seed": 21}
    first = submit(jobs.url, body, headers={"Idempotency-Key": "order-77"})
    again = api(jobs.url, "/v1/videos", "POST", json=body, headers={"Idempotency-Key": "order-77"})
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = api(jobs.url, "/v1/videos", "POST", json={**body, "seed": 22},
                headers={"Idempotency-Key": "order-77"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    done = wait_job(jobs.url, first["id"])
    assert done["status"] == "completed" and not done["cache_hit"]
    calls = dit_calls(jobs.grpc_url)
    # the same content with a new key, after completion: from the cache, no dit call
    hit = wait_job(jobs.url, submit(jobs.url, body,
                                    headers={"Idempotency-Key": "order-78"})["id"])
    assert hit["status"] == "completed" and hit["cache_hit"] and hit["cached_from"] == first["id"]
    assert dit_calls(jobs.grpc_url) == calls
    a = api(jobs.url, f"/v1/videos/{first['id']}/content").content
    b = api(jobs.url, f"/v1/videos/{hit['id']}/content").content
    assert a == b and hit["model"] == done["model"]


BAD = [
    ({"prompt": "x", "colour": "red"}, 400, "unknown_parameter"),
    ({"prompt": 5}, 400, "invalid_type"),
    ({"prompt": "x", "steps": "many"}, 400, "invalid_type"),
    ({"prompt": "x", "size": "big"}, 400, "invalid_value"),
    ({"prompt": "x", "seconds": -1}, 400, "out_of_range"),
    ({"prompt": "x", "seconds": 2, "num_frames": 9}, 400, "conflicting_parameters"),
    ({"prompt": "x", "priority": "urgent"}, 400, "invalid_value"),
    ({"size": "64x64"}, 400, "missing_parameter"),
    ({"listing": {"price": 3}}, 400, "invalid_listing"),
    ([1, 2], 400, "invalid_body"),
]


@pytest.mark.parametrize("body,status,code", BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_bad_bodies_are_4xx_json(jobs, body, status, code):
    r = api(jobs.url, "/v1/videos", "POST", json=body)
    assert r.status_code == status and r.json()["error"]["code"] == code, r.text


def test_bad_requests_auth_and_ssrf(jobs):
    big = api(jobs.url, "/v1/videos", "POST", data=b'{"prompt": "' + b"a" * 70000 + b'"}',
              headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
    assert api(jobs.url, "/v1/videos", params={"after": "not-a-cursor"}).json()["error"][
        "code"] == "invalid_cursor"
    assert api(jobs.url, "/v1/videos", params={"limit": "0"}).status_code == 400
    assert api(jobs.url, "/v1/videos", params={"status": "done"}).status_code == 400
    assert api(jobs.url, "/v1/videos", key=None).json()["error"]["code"] == "missing_api_key"
    r = api(jobs.url, "/v1/videos", key="wrong-key")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert api(jobs.url, "/v1/videos/video_" + "0" * 32).status_code == 404
    # webhooks to loopback and private ranges: refused, and nothing connects to them
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        for url in (f"http://127.0.0.1:{port}/hook", "http://10.0.0.1/hook",
                    "http://169.254.169.254/latest", f"http://localhost:{port}/"):
            r = api(jobs.url, "/v1/videos", "POST", json={"prompt": "x", **SMALL,
                                                          "webhook_url": url})
            assert r.status_code == 400 and r.json()["error"]["code"] == "webhook_refused", url
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()
    assert requests.get(jobs.url + "/healthz", timeout=5).status_code == 200


def test_schemathesis_finds_no_server_error(jobs, tmp_path):
    """At least 300 generated requests against /openapi.json: no 5xx. Against a third API
    process on another Redis database with no workers, so fuzzed jobs only queue."""
    port = free_ports(1)[0]
    fuzz = Jobs("", "", jobs.redis_port, jobs.redis_dir, tmp_path / "s", jobs.grpc_url,
                tmp_path, jobs.env)
    proc_url = start_api(fuzz, port, "--redis", f"redis://127.0.0.1:{jobs.redis_port}/3")
    try:
        out = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"), "run",
             proc_url + "/openapi.json", "-H", f"Authorization: Bearer {KEYS['alice']}",
             "--checks", "not_a_server_error", "--max-examples", "60", "--seed", "7",
             "--phases", "examples,coverage,fuzzing"],
            capture_output=True, text=True, timeout=400)
        text = out.stdout + out.stderr
        assert out.returncode == 0, text[-4000:]
        generated = int(re.search(r"([0-9]+) generated", text).group(1))
        assert generated >= 300, text[-2000:]
    finally:
        for proc in fuzz.apis:
            proc.kill()
            proc.wait()


class Receiver:
    """A webhook endpoint on loopback that fails the first `failures` deliveries (500)."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.received: list[tuple[dict, bytes, bool]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = webhooks.verify(body, self.headers[webhooks.SIGNATURE_HEADER],
                                     SECRET.encode())
                outer.received.append((dict(self.headers), body, ok))
                status = 500 if len(outer.received) <= outer.failures else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def test_webhook_signed_and_retried(jobs):
    receiver = Receiver(failures=3)
    try:
        job = submit(jobs.private_url, {"prompt": "a white mug", **SMALL, "seed": 31,
                                        "webhook_url": receiver.url})
        job = wait_job(jobs.url, job["id"])
        deadline = time.monotonic() + 30
        while (job["webhook"] or {}).get("state") not in ("delivered", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
            job = api(jobs.url, f"/v1/videos/{job['id']}").json()
    finally:
        receiver.close()
    assert job["webhook"]["state"] == "delivered"
    attempts = job["webhook"]["attempts"]
    assert [a["status"] for a in attempts] == [500, 500, 500, 200]
    assert len(receiver.received) == 4 and all(ok for _, _, ok in receiver.received)
    headers, body, _ = receiver.received[-1]
    payload = json.loads(body)
    assert payload["type"] == "video.completed" and payload["data"]["id"] == job["id"]
    assert payload["data"]["status"] == "completed"
    # every retry is the same delivery (receivers dedupe on it); a wrong secret fails
    assert len({h[webhooks.ID_HEADER] for h, _, _ in receiver.received}) == 1
    assert not webhooks.verify(body, headers[webhooks.SIGNATURE_HEADER], b"another secret")


def test_worker_killed_mid_job_completes_exactly_once(jobs):
    receiver = Receiver()
    try:
        created = submit(jobs.private_url, {"prompt": "a leather handbag turning", "size":
                                            "128x128", "num_frames": 17, "steps": 30, "seed": 41,
                                            "webhook_url": receiver.url})
        job = created
        deadline = time.monotonic() + 60
        while (job["progress"] or {}).get("step", 0) < 2:
            assert time.monotonic() < deadline, job
            time.sleep(0.05)
            job = api(jobs.url, f"/v1/videos/{created['id']}").json()
        pid = int(job["worker"].rsplit(":", 1)[1])
        victim = next(w for w in jobs.workers if w.pid == pid)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed = time.monotonic()
        jobs.start_worker()
        done = wait_job(jobs.url, created["id"], timeout=120)
        took = time.monotonic() - killed
        deadline = time.monotonic() + 30  # the webhook goes out after the completion
        while (done["webhook"] or {}).get("state") == "pending":
            assert time.monotonic() < deadline, done
            time.sleep(0.1)
            done = api(jobs.url, f"/v1/videos/{created['id']}").json()
        time.sleep(1.0)  # a second (wrong) completion would have arrived by now
    finally:
        receiver.close()
    assert done["status"] == "completed" and done["attempts"] == 2, done
    assert done["webhook"]["state"] == "delivered"
    completions = [json.loads(b) for _, b, _ in receiver.received]
    assert [c["type"] for c in completions] == ["video.completed"]
    stored = [p.name for p in (jobs.storage / "videos").iterdir() if created["id"] in p.name]
    assert stored == [f"{created['id']}.mp4"]  # one object, no temp file left
    frames, _ = decode_mp4(api(jobs.url, f"/v1/videos/{created['id']}/content").content)
    assert frames.shape == (17, 128, 128, 3)
    # the bound: the heartbeat timeout, a few seconds of maintenance, then the clip again
    print(f"killed worker's job completed {took:.1f} s after the kill")
    assert took < HEARTBEAT_MS / 1e3 + 60


def test_redis_restart_loses_and_repeats_nothing(jobs):
    ids = [submit(jobs.url, {"prompt": f"product {i}, a ceramic vase", "size": "64x64",
                             "num_frames": 5, "steps": 6, "seed": 1000 + i})["id"]
           for i in range(22)]
    deadline = time.monotonic() + 60
    while True:
        states = [api(jobs.url, f"/v1/videos/{i}").json()["status"] for i in ids]
        if states.count("in_progress") == 2:
            break
        assert time.monotonic() < deadline, states
        time.sleep(0.05)
    assert states.count("queued") >= 18
    jobs.redis.send_signal(signal.SIGKILL)
    jobs.redis.wait()
    time.sleep(0.5)
    jobs.start_redis()  # the same directory: the AOF
    done = [wait_job(jobs.url, i, timeout=180) for i in ids]
    assert [d["status"] for d in done] == ["completed"] * 22, [d["error"] for d in done]
    assert [d["attempts"] for d in done] == [1] * 22
    stored = {p.name for p in (jobs.storage / "videos").iterdir()}
    assert {f"{i}.mp4" for i in ids} <= stored
    assert not [n for n in stored if not n.endswith(".mp4")]
    frames = [decode_mp4(api(jobs.url, f"/v1/videos/{i}/content").content)[0] for i in ids[:2]]
    assert not np.array_equal(frames[0], frames[1])


def test_jobs_local_makes_a_key_serves_and_stops(server, tmp_path):
    """`make jobs`: Redis, a worker and the API together; a key made and printed when
    T2V_API_KEY is unset; Ctrl-C stops all of them."""
    port, redis_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if k not in ("T2V_API_KEY", "T2V_API_KEYS")}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "t2vserve"), "jobs-local", "--server",
         f"{server.grpc_url}=1", "--port", str(port), "--redis-port", str(redis_port),
         "--dir", str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        key, lines = None, []
        for line in proc.stdout:
            lines.append(line)
            if "this run's API key is" in line:
                key = line.rsplit(" ", 1)[1].strip()
            if line.startswith("try it"):
                break
        assert key, "".join(lines)
        url = f"http://127.0.0.1:{port}"
        job = submit(url, {"prompt": "a silver watch", **SMALL}, key=key)
        assert wait_job(url, job["id"], key=key)["status"] == "completed"
        assert api(url, "/v1/videos", key="not-the-key").status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=90)[0]
    assert proc.returncode == 0, rest
    assert "jobs-local: stopped" in rest
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_clips_stored_in_s3(jobs, s3_server, tmp_path):
    """The production storage: a worker and an API on S3 (a local moto server), on their own
    Redis database so that only this worker takes the job."""
    import boto3

    bucket = new_bucket(s3_server)
    storage = f"s3://{bucket}/clips?endpoint_url={s3_server}&region=us-east-1"
    redis_url = f"redis://127.0.0.1:{jobs.redis_port}/2"
    s3 = Jobs("", "", jobs.redis_port, jobs.redis_dir, Path(storage), jobs.grpc_url, tmp_path,
              dict(os.environ, **{k: jobs.env[k] for k in ("T2V_API_KEYS", "T2V_WEBHOOK_SECRET")}))
    url = start_api(s3, free_ports(1)[0], "--redis", redis_url, "--storage", storage)
    worker = subprocess.Popen(
        [str(Path(sys.executable).parent / "t2vserve"), "jobs-worker", "--redis", redis_url,
         "--storage", storage, "--server", f"{jobs.grpc_url}=1"], env=s3.env,
        stdout=open(tmp_path / "worker.log", "ab"), stderr=subprocess.STDOUT)
    try:
        job = wait_job(url, submit(url, {"prompt": "a wool scarf", **SMALL, "seed": 51})["id"])
        assert job["status"] == "completed", (tmp_path / "worker.log").read_text()[-3000:]
        data = api(url, f"/v1/videos/{job['id']}/content").content
        obj = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").get_object(
            Bucket=bucket, Key=f"clips/videos/{job['id']}.mp4")
        assert obj["Body"].read() == data and obj["ContentType"] == "video/mp4"
        assert decode_mp4(data)[0].shape == (5, 64, 64, 3)
        api(url, f"/v1/videos/{job['id']}", "DELETE")
        listed = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1") \
            .list_objects_v2(Bucket=bucket).get("KeyCount", 0)
        assert listed == 0
    finally:
        worker.kill()
        worker.wait()
        for proc in s3.apis:
            proc.kill()
            proc.wait()


def test_rate_and_active_job_limits_answer_429_with_retry_after(jobs, tmp_path):
    """A third API process on its own Redis database (no workers: its jobs stay queued)."""
    limited = Jobs("", "", jobs.redis_port, jobs.redis_dir, tmp_path / "s", jobs.grpc_url,
                   tmp_path, jobs.env)
    url = start_api(limited, free_ports(1)[0], "--redis",
                    f"redis://127.0.0.1:{jobs.redis_port}/4", "--rate-per-minute", "3",
                    "--max-active-jobs", "2")
    try:
        if time.time() % 60 > 50:  # the per-minute counter must not roll over mid-test
            time.sleep(61 - time.time() % 60)
        body = {"prompt": "a lamp", **SMALL}
        assert [api(url, "/v1/videos", "POST", json=body).status_code for _ in range(2)] == \
            [202, 202]
        r = api(url, "/v1/videos", "POST", json=body)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert "2 jobs queued or running" in r.json()["error"]["message"]
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        r = api(url, "/v1/videos", "POST", json=body)  # the 4th this minute
        assert r.status_code == 429 and "more than 3 requests a minute" in r.json()["error"][
            "message"] and int(r.headers["Retry-After"]) >= 1
        # another key has its own limits; a replayed Idempotency-Key is not counted
        assert api(url, "/v1/videos", "POST", key="bob", json=body,
                   headers={"Idempotency-Key": "b1"}).status_code == 202
        for _ in range(4):
            again = api(url, "/v1/videos", "POST", key="bob", json=body,
                        headers={"Idempotency-Key": "b1"})
            assert again.status_code == 200
        assert api(url, "/v1/videos", "POST", key="bob", json={**body, "seed": 3}).status_code \
            == 202
    finally:
        for proc in limited.apis:
            proc.kill()
            proc.wait()
