"""`t2vserve batch` without a server: a stand-in client returns bytes made from the request."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from t2vserve.client.batch import (assign_names, read_manifest, remove_stale_temps, run_batch,
                                   write_atomic)
from t2vserve.client.core import Video

QC = {"mean_luma": 100.0, "black_frame_ratio": 0.0, "frozen_frame_ratio": 0.0,
      "temporal_flicker": 0.0}


class FakeClient:
    def __init__(self, calls):
        self.calls = calls

    def generate(self, prompt, *, seed, timeout=None, **params):
        self.calls.append(prompt)
        return Video(mp4=f"clip for {prompt} / {seed}".encode() * 100, qc=dict(QC), info={})

    def close(self):
        pass


def batch(tmp_path, lines, calls=None):
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("\n".join(map(json.dumps, lines)) + "\n")
    calls = [] if calls is None else calls
    summary = run_batch(catalog, tmp_path / "videos", url="unused", concurrency=3,
                        stream=open(os.devnull, "w"), client_factory=lambda url: FakeClient(calls))
    return summary, calls


def records(tmp_path):
    manifest = tmp_path / "videos" / "manifest.jsonl"
    return [json.loads(x) for x in manifest.read_text().splitlines()]


def test_a_duplicate_sku_fails_and_colliding_names_get_their_own_files(tmp_path):
    lines = [{"sku": "A1", "prompt": "first"}, {"sku": "A/1", "prompt": "slash"},
             {"sku": "A1", "prompt": "second"}, {"sku": "A_1", "prompt": "underscore"},
             {"sku": "a_1", "prompt": "lower"}]
    summary, calls = batch(tmp_path, lines)
    assert (summary["ok"], summary["failed"]) == (4, 1)
    assert sorted(calls) == ["first", "lower", "slash", "underscore"]
    out = tmp_path / "videos"
    state = read_manifest(out / "manifest.jsonl")
    assert set(state) == {"A1", "A/1", "A_1", "a_1"}
    paths = {sku: r["path"] for sku, r in state.items()}
    assert len({p.casefold() for p in paths.values()}) == 4
    assert paths["A1"] == "A1.mp4" and paths["A_1"] == "A_1.mp4"
    assert paths["A/1"].startswith("A_1-") and paths["a_1"].startswith("a_1-")
    for sku, r in state.items():
        data = (out / r["path"]).read_bytes()
        assert data.startswith(f"clip for {r['prompt']}".encode())
        assert hashlib.sha256(data).hexdigest() == r["sha256"] and len(data) == r["bytes"]
    dup = [r for r in records(tmp_path) if r.get("duplicate_of")]
    assert len(dup) == 1 and dup[0]["status"] == "failed" and dup[0]["line"] == 3
    assert dup[0]["error"] == ("line 3 (sku A1): duplicate sku, first on line 1; "
                               "only line 1 is generated")
    assert any("not a safe file name" in w for w in state["A/1"]["warnings"])
    assert any("taken by sku 'A_1'" in w for w in state["a_1"]["warnings"])

    # The rerun keeps every clip, reports the duplicate again, and A1's state stays ok.
    summary, calls = batch(tmp_path, lines)
    assert (summary["skipped"], summary["failed"], calls) == (4, 1, [])
    assert read_manifest(out / "manifest.jsonl")["A1"]["status"] == "ok"


@pytest.mark.parametrize("prompt, message", [
    ("", "prompt is empty"), ("   \t", "prompt is blank (whitespace only)"),
    (None, "prompt is empty (null)"), (7, "prompt must be a string, got int"),
    (["a", "b"], "prompt must be a string, got list"),
])
def test_a_bad_prompt_is_named_and_never_replaced_by_the_listing(tmp_path, prompt, message):
    lines = [{"sku": "A4", "prompt": "fine"},
             {"sku": "A5", "prompt": prompt, "name": "cup", "color": "red"}]
    summary, calls = batch(tmp_path, lines)
    assert (summary["ok"], summary["failed"], calls) == (1, 1, ["fine"])
    r = read_manifest(tmp_path / "videos" / "manifest.jsonl")["A5"]
    assert r["status"] == "failed" and r["error"].startswith(f"line 2 (sku A5): {message}")
    assert not (tmp_path / "videos" / "A5.mp4").exists()


def test_a_listing_without_a_prompt_still_builds_one(tmp_path):
    summary, calls = batch(tmp_path, [{"sku": "C1", "name": "cup", "color": "red"}])
    assert summary["ok"] == 1 and "red cup" in calls[0]


def test_resume_regenerates_a_clip_that_does_not_match_its_record(tmp_path):
    lines = [{"sku": f"S{i}", "prompt": f"p{i}"} for i in range(4)]
    batch(tmp_path, lines)
    out = tmp_path / "videos"
    full = (out / "S1.mp4").read_bytes()
    (out / "S1.mp4").write_bytes(full[: len(full) // 2])            # truncated
    (out / "S2.mp4").write_bytes(full[:-1] + b"x")                   # same size, other bytes
    (out / "S3.mp4").unlink()                                        # gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / f".S1.mp4.{dead.pid}.tmp"
    stale.write_bytes(full[:10])
    live = out / f".S9.mp4.{os.getppid()}.tmp"                      # another run's, in use
    live.write_bytes(b"partial")
    summary, calls = batch(tmp_path, lines)
    assert summary["skipped"] == 1 and sorted(calls) == ["p1", "p2", "p3"]
    assert not stale.exists() and live.exists()
    state = read_manifest(out / "manifest.jsonl")
    for sku, r in state.items():
        assert hashlib.sha256((out / r["path"]).read_bytes()).hexdigest() == r["sha256"]


def test_a_record_without_size_and_hash_is_not_trusted(tmp_path):
    out = tmp_path / "videos"
    out.mkdir()
    (out / "L1.mp4").write_bytes(b"old")
    (out / "manifest.jsonl").write_text(json.dumps(
        {"sku": "L1", "path": "L1.mp4", "status": "ok", "error": None}) + "\n")
    summary, calls = batch(tmp_path, [{"sku": "L1", "prompt": "legacy"}])
    assert summary["ok"] == 1 and calls == ["legacy"]
    assert (out / "L1.mp4").read_bytes().startswith(b"clip for legacy")


def test_a_torn_manifest_line_is_skipped_and_ended(tmp_path):
    lines = [{"sku": "T1", "prompt": "p1"}, {"sku": "T2", "prompt": "p2"}]
    batch(tmp_path, lines[:1])
    manifest = tmp_path / "videos" / "manifest.jsonl"
    with open(manifest, "a") as f:
        f.write('{"sku": "T2", "sta')                                # killed mid-append
    summary, calls = batch(tmp_path, lines)
    assert summary["skipped"] == 1 and calls == ["p2"]
    assert manifest.read_text().splitlines()[1] == '{"sku": "T2", "sta'
    assert read_manifest(manifest)["T2"]["status"] == "ok"


def test_names_already_held_in_the_manifest_are_not_given_to_another_sku():
    previous = {"a1": {"sku": "a1", "path": "a1.mp4"}, "B": {"sku": "B", "path": "B-keep.mp4"}}
    names = assign_names(["A1", "B", "C"], previous)
    assert names["A1"][0].startswith("A1-") and "taken by sku 'a1'" in names["A1"][1]
    assert names["B"] == ("B-keep.mp4", None) and names["C"] == ("C.mp4", None)


def test_write_atomic_leaves_the_old_file_and_no_temp_when_it_fails(tmp_path, monkeypatch):
    target = tmp_path / "X.mp4"
    target.write_bytes(b"old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["X.mp4"]
    monkeypatch.undo()
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["X.mp4"]
    assert remove_stale_temps(tmp_path) == []
