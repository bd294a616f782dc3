"""The client, the command line and the HTTP shim against a real tritonserver."""

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from t2vserve.client import AsyncT2VClient, T2VClient, T2VDeadlineError, frames_for
from t2vserve.media import decode_mp4

from .conftest import free_ports

CLI = [sys.executable, "-m", "t2vserve.cli"]
BRIEF_LISTING = {"name": "无线蓝牙降噪耳机", "color": "黑色", "features": ["主动降噪", "续航30小时", "触控操作"]}


def _cli(*args, timeout=600):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def _t2v_requests(server):
    """How many `t2v` requests reached the server (Triton counts a Python model's error
    response as a success in its statistics, so both counters together)."""
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(server.grpc_url)
    s = c.get_inference_statistics(model_name="t2v", as_json=True)["model_stats"][0]["inference_stats"]
    c.close()
    return int(s.get("success", {}).get("count", 0)) + int(s.get("fail", {}).get("count", 0))


def test_generate_command_writes_the_requested_duration_and_fps(server, tmp_path):
    out = tmp_path / "clip.mp4"
    r = _cli("generate", "a red cup rotating slowly on a wooden table", "-o", str(out),
             "--duration", "3", "--fps", "8", "--width", "96", "--height", "64", "--steps", "2",
             "--seed", "3", "--url", server.grpc_url)
    assert r.returncode == 0, r.stderr
    frames, fps = decode_mp4(out.read_bytes())
    assert frames.shape == (frames_for(3, 8), 64, 96, 3) == (25, 64, 96, 3)
    assert fps == 8.0 and len(frames) / fps == pytest.approx(3, abs=0.15)


def test_generate_from_a_product_listing(server, tmp_path):
    listing = tmp_path / "listing.json"
    listing.write_text(json.dumps(BRIEF_LISTING, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "earphones.mp4"
    r = _cli("generate", "--product", str(listing), "-o", str(out), "--steps", "2",
             "--url", server.grpc_url)
    assert r.returncode == 0, r.stderr
    assert "黑色" in r.stdout and "无线蓝牙降噪耳机" in r.stdout
    assert decode_mp4(out.read_bytes())[0].shape == (17, 128, 128, 3)


def _catalog(path):
    small = {"width": 64, "height": 64, "num_frames": 5, "steps": 2}
    zh = [("杯子", "红色"), ("保温杯", "银色"), ("运动鞋", "白色"), ("背包", "蓝色"), ("台灯", "黄色"),
          ("无线蓝牙降噪耳机", "黑色")]
    en = [("cup", "green"), ("thermos", "silver"), ("sneaker", "orange"), ("backpack", "purple"),
          ("lamp", "white")]
    lines = [{"sku": f"ZH-{i}", "name": n, "color": c, **small} for i, (n, c) in enumerate(zh)]
    lines += [{"sku": f"EN-{i}", "name": n, "color": c, "material": "metal", **small}
              for i, (n, c) in enumerate(en)]
    lines.append({"sku": "BAD-1", "name": "cup", "color": "red", **small, "width": 100})
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n",
                    encoding="utf-8")


def test_batch_makes_11_clips_records_the_failure_and_resumes(server, tmp_path):
    catalog, out = tmp_path / "catalog.jsonl", tmp_path / "videos"
    _catalog(catalog)
    r = _cli("batch", str(catalog), "--out-dir", str(out), "--concurrency", "4",
             "--url", server.grpc_url)
    assert r.returncode == 1, r.stderr  # one failure
    assert "clips/min" in r.stderr and "ETA" in r.stderr  # the progress line
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 12
    failed = [x for x in records if x["status"] == "failed"]
    assert [x["sku"] for x in failed] == ["BAD-1"]
    assert "width must be a multiple of 32" in failed[0]["error"]
    done = [x for x in records if x["status"] in ("ok", "review")]
    assert len(done) == 11 and len(list(out.glob("*.mp4"))) == 11
    for x in done:
        assert set(x) >= {"sku", "prompt", "seed", "path", "qc", "latency_s", "status", "error"}
        assert decode_mp4((out / x["path"]).read_bytes())[0].shape == (5, 64, 64, 3)
    assert any("红色" in x["prompt"] for x in done) and any("green" in x["prompt"] for x in done)

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")}
    before = _t2v_requests(server)
    r = _cli("batch", str(catalog), "--out-dir", str(out), "--url", server.grpc_url)
    assert "1 failed, 11 already done" in r.stdout
    assert _t2v_requests(server) - before == 1  # only the failed SKU was sent again
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.mp4")} == mtimes
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 13 and records[-1]["sku"] == "BAD-1"


def test_a_short_deadline_is_a_clear_error_and_the_server_stays_healthy(server):
    with T2VClient(server.grpc_url) as client:
        t0 = time.monotonic()
        with pytest.raises(T2VDeadlineError, match="deadline"):
            client.generate("a blue bottle", steps=50, width=256, height=256, timeout=0.5)
        assert time.monotonic() - t0 < 5
        assert client.client.is_server_ready()
        assert client.generate("a blue bottle", width=64, height=64, num_frames=5, steps=1).mp4


def _dit_inferences(server):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(server.grpc_url)
    s = c.get_inference_statistics(model_name="dit", as_json=True)["model_stats"][0]
    c.close()
    return int(s.get("inference_count", 0))


def test_cancelling_an_asyncio_call_cancels_the_request(server):
    async def scenario():
        async with AsyncT2VClient(server.grpc_url) as client:
            start = _dit_inferences(server)
            task = asyncio.create_task(client.generate(
                "a yellow ball zooming in", steps=50, width=256, height=256, num_frames=33, seed=9))
            while _dit_inferences(server) - start < 4:  # the loop is running
                await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(3.0)
            return start
    start = asyncio.run(scenario())
    used = _dit_inferences(server) - start
    assert used < 2 * 50, used  # the loop stopped long before its 50 steps
    settled = _dit_inferences(server)
    time.sleep(1.0)
    assert _dit_inferences(server) == settled  # and made no further dit calls
    with T2VClient(server.grpc_url) as client:
        assert client.generate("a yellow ball", width=64, height=64, num_frames=5, steps=1).mp4


@pytest.fixture(scope="module")
def gateway(server):
    port = free_ports(1)[0]
    proc = subprocess.Popen([*CLI, "gateway", "--url", server.grpc_url, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            break
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(10)


def _post(url, body: bytes, timeout=600):
    req = urllib.request.Request(url + "/t2v/generate", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@pytest.mark.slow
def test_http_shim_serves_the_briefs_request_body(gateway):
    body = {"prompt": "一个银色保温杯放在木桌上,热水倒入后升起袅袅热气", "width": 640, "height": 480,
            "duration": 3, "fps": 24, "seed": 42, "guidance_scale": 7.5}
    status, headers, data = _post(gateway, json.dumps(body, ensure_ascii=False).encode())
    assert status == 200, data[:500]
    assert headers["Content-Type"] == "video/mp4"
    frames, fps = decode_mp4(data)
    assert frames.shape == (73, 480, 640, 3) and fps == 24.0
    assert "mean_luma" in json.loads(headers["X-T2V-QC"])


def test_http_shim_bad_input_is_a_4xx_with_the_allowed_range(gateway):
    status, _, data = _post(gateway, json.dumps({"prompt": "a cup", "width": 100}).encode())
    assert status == 400
    message = json.loads(data)["error"]["message"]
    assert "width must be a multiple of 32 in [64, 832], got 100" in message
    status, _, data = _post(gateway, b"{not json")
    assert status == 400 and "error" in json.loads(data)
    status, _, data = _post(gateway, json.dumps({"prompt": "a cup", "colour": "red"}).encode())
    assert status == 400 and "unknown fields ['colour']" in json.loads(data)["error"]["message"]
    status, _, data = _post(gateway, json.dumps({"prompt": "x" * 70000}).encode())
    assert status == 413
    status, _, data = _post(gateway, json.dumps({"prompt": "a cup", "width": 64, "height": 64,
                                                 "num_frames": 5, "steps": 1}).encode())
    assert status == 200 and data[4:8] == b"ftyp"


class RecordingRetry:
    """The client's own RetryPolicy, keeping the pauses it chose (no sleeping)."""

    def __init__(self, attempts):
        from t2vserve.client import RetryPolicy

        self.policy, self.attempts, self.pauses = RetryPolicy(attempts=attempts), attempts, []

    def delay(self, attempt):
        pause = self.policy.delay(attempt)
        assert 0 <= pause <= min(self.policy.max_delay_s, self.policy.base_delay_s * 2 ** attempt)
        self.pauses.append(pause)
        return 0.01


def test_retries_happen_only_on_retryable_errors(server):
    from t2vserve.client import T2VError

    retry = RecordingRetry(attempts=4)
    before = _t2v_requests(server)
    with T2VClient(server.grpc_url, retry=retry) as client:
        with pytest.raises(T2VError) as err:
            client.generate("a red cup", width=100)
    assert err.value.status == "INVALID_ARGUMENT" and not err.value.retryable
    assert retry.pauses == []  # never retried
    assert _t2v_requests(server) - before == 1

    retry = RecordingRetry(attempts=3)
    nobody = f"127.0.0.1:{free_ports(1)[0]}"
    with T2VClient(nobody, retry=retry) as client:
        with pytest.raises(T2VError) as err:
            client.generate("a red cup", timeout=20)
    assert err.value.status == "UNAVAILABLE" and err.value.retryable
    assert len(retry.pauses) == 2  # three tries in all
