"""`t2vserve batch` against a real tritonserver: duplicate SKUs, colliding file names, empty
prompts, and a run killed with SIGKILL then resumed."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import av

CLI = [sys.executable, "-m", "t2vserve.cli"]
SMALL = {"width": 64, "height": 64, "num_frames": 5, "steps": 1}


def _write_catalog(path, lines):
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n",
                    encoding="utf-8")


def _batch(catalog, out, server, *extra):
    return subprocess.run([*CLI, "batch", str(catalog), "--out-dir", str(out), "--url",
                           server.grpc_url, *extra], capture_output=True, text=True, timeout=600)


def _records(out):
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x) for x in lines]


def _state(out):
    """The last record per SKU, duplicate-line records aside (as the batch reads it)."""
    state = {}
    for r in _records(out):
        if "duplicate_of" not in r:
            state[r["sku"]] = r
    return state


def _frames(path):
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_duplicate_skus_and_colliding_names_lose_no_clip(server, tmp_path):
    catalog, out = tmp_path / "catalog.jsonl", tmp_path / "videos"
    lines = [{"sku": "A1", "prompt": "a red cup on a table", **SMALL},
             {"sku": "A/1", "prompt": "a blue bottle on a table", **SMALL},
             {"sku": "A1", "prompt": "a green lamp on a desk", **SMALL},
             {"sku": "A_1", "prompt": "a white sneaker on a rock", **SMALL}]
    _write_catalog(catalog, lines)
    r = _batch(catalog, out, server)
    assert r.returncode == 1, r.stderr  # the duplicate line is a failure
    ok, review, failed = map(int, re.match(r"(\d+) ok, (\d+) for review, (\d+) failed",
                                           r.stdout).groups())
    assert (ok + review, failed) == (3, 1), r.stdout

    state = _state(out)
    assert set(state) == {"A1", "A/1", "A_1"}
    assert all(x["status"] in ("ok", "review") for x in state.values())
    assert state["A1"]["prompt"] == "a red cup on a table"  # the first line, not the second
    paths = [x["path"] for x in state.values()]
    assert len(set(paths)) == 3 and state["A1"]["path"] == "A1.mp4"
    assert state["A_1"]["path"] == "A_1.mp4" and state["A/1"]["path"].startswith("A_1-")
    assert sorted(p.name for p in out.glob("*.mp4")) == sorted(paths)
    for x in state.values():
        assert _sha256(out / x["path"]) == x["sha256"] and _frames(out / x["path"]) == 5
    dup = [x for x in _records(out) if "duplicate_of" in x]
    assert len(dup) == 1
    assert (dup[0]["sku"], dup[0]["line"], dup[0]["status"]) == ("A1", 3, "failed")
    assert "duplicate sku, first on line 1" in dup[0]["error"]


def test_an_empty_or_blank_prompt_is_named(server, tmp_path):
    catalog, out = tmp_path / "catalog.jsonl", tmp_path / "videos"
    _write_catalog(catalog, [{"sku": "A4", "prompt": "a silver thermos", **SMALL},
                             {"sku": "A5", "prompt": "", **SMALL},
                             {"sku": "A6", "prompt": "   ", "name": "cup", "color": "red", **SMALL},
                             {"sku": "A7", "prompt": 42, **SMALL}])
    r = _batch(catalog, out, server)
    assert r.returncode == 1 and ", 3 failed" in r.stdout, r.stdout + r.stderr
    state = _state(out)
    assert state["A4"]["status"] in ("ok", "review")
    assert state["A5"]["error"] == "line 2 (sku A5): prompt is empty"
    assert state["A6"]["error"] == "line 3 (sku A6): prompt is blank (whitespace only)"
    assert state["A7"]["error"] == "line 4 (sku A7): prompt must be a string, got int"
    assert "missing required field" not in r.stdout + json.dumps(_records(out))
    assert [p.name for p in out.glob("*.mp4")] == ["A4.mp4"]


def test_a_killed_run_resumes_to_complete_clips(server, tmp_path):
    catalog, out = tmp_path / "catalog.jsonl", tmp_path / "videos"
    skus = [f"K{i:02d}" for i in range(12)]
    colours = ["red", "green", "blue", "white", "black", "yellow"]
    _write_catalog(catalog, [{"sku": s, "prompt": f"a {colours[i % 6]} cup turning, take {i}",
                              **SMALL, "num_frames": 9, "steps": 2} for i, s in enumerate(skus)])
    log = open(tmp_path / "first_run.log", "w")
    proc = subprocess.Popen([*CLI, "batch", str(catalog), "--out-dir", str(out), "--url",
                             server.grpc_url, "--concurrency", "3"], stdout=log, stderr=log)
    manifest = out / "manifest.jsonl"
    try:
        # Kill as soon as one clip is recorded: the three workers have the next ones in flight.
        while proc.poll() is None and not (manifest.exists() and manifest.read_text().strip()):
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first_run.log").read_text()
    first = _state(out)
    assert 1 <= len(first) < len(skus)  # interrupted with clips still to make
    done = sorted(s for s, x in first.items() if x["status"] in ("ok", "review"))
    assert done, first

    # As if the kill had landed mid-write without atomic writes: a truncated clip under its
    # final name, and a temporary file of the killed run.
    truncated = out / first[done[0]]["path"]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    stale = out / f".{skus[-1]}.mp4.{proc.pid}.tmp"
    stale.write_bytes(data[: len(data) // 3])
    before = {s: sum(x["sku"] == s for x in _records(out)) for s in skus}

    r = _batch(catalog, out, server, "--concurrency", "3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(done) - 1} already done" in r.stdout
    state = _state(out)
    assert set(state) == set(skus)
    for s in skus:
        x = state[s]
        assert x["status"] in ("ok", "review"), x
        clip = out / x["path"]
        assert clip.stat().st_size == x["bytes"] and _sha256(clip) == x["sha256"]
        assert _frames(clip) == 9
    after = {s: sum(x["sku"] == s for x in _records(out)) for s in skus}
    assert after[done[0]] == before[done[0]] + 1  # the truncated clip was made again
    assert all(after[s] == before[s] for s in done[1:])  # intact ones were not
    assert not stale.exists() and not list(out.glob(".*"))
