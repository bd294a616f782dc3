"""`t2vserve bench jobs` (perf/jobs_burst.py) against the session's tritonserver: a burst
through real Redis, the `t2vserve jobs` API and two `t2vserve jobs-worker` processes. All jobs
complete, none is run twice (attempts, one object each, dit's count), and the result files are
written. 12 jobs in the normal suite; issue 22's 200 under the soak marker."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from t2vserve.perf.jobs_burst import duplicates, markdown, percentile, run_burst, write


def _burst(server, tmp_path: Path, jobs: int) -> dict:
    result = run_burst(server.grpc_url, jobs=jobs, workers=2, work_dir=tmp_path / "work",
                       profile=server.profile.name)
    out = tmp_path / "results"
    path = write(result, out)
    d = result["duplicates"]
    assert result["completed"] == jobs and result["failed"] == 0, result["errors"]
    assert d["ok"], d
    assert d["jobs_with_attempts_not_1"] == 0 and d["cache_hits"] == 0
    assert d["objects"] == jobs and not d["stray_files"] and not d["objects_missing"]
    # the probe's count (a CFG pair per step at the default guidance 5) times the jobs
    assert d["dit_inferences_per_job"] == 2 * 2
    assert d["dit_inferences_counted"] == d["dit_inferences_expected"] == 4 * jobs
    assert d["dit_forwards_reported_by_jobs"] == 4 * jobs
    wait, run, e2e = result["queue_wait_s"], result["run_s"], result["end_to_end_s"]
    assert 0 <= wait["p50"] <= wait["p95"] <= wait["max"]
    assert 0 < run["p50"] <= run["p95"] <= run["max"]
    assert e2e["max"] <= result["span_s"] + 0.01
    assert result["throughput_jobs_per_s"] > 0 and result["submit"]["jobs_per_s"] > 0
    # two workers, one generation each: never more than two jobs ran at once, so the
    # burst took at least half the jobs' summed run time
    assert result["span_s"] >= jobs * run["mean"] / 2 * 0.95
    assert path.name.startswith("jobs-burst-") and path.exists()
    assert json.loads(path.read_text())["completed"] == jobs
    assert f"**{jobs}/{jobs} completed**" in path.with_suffix(".md").read_text()
    # every process the driver started is gone (Redis, API, workers)
    for proc_dir in Path("/proc").iterdir():
        if proc_dir.name.isdigit():
            try:
                cmd = (proc_dir / "cmdline").read_bytes()
            except OSError:
                continue
            assert str(tmp_path / "work").encode() not in cmd, cmd
    return result


def test_burst_of_12_completes_once_each(server, tmp_path):
    _burst(server, tmp_path, 12)


@pytest.mark.soak
def test_burst_of_200_completes_once_each(server, tmp_path):
    result = _burst(server, tmp_path, 200)
    print(markdown(result))


def test_duplicate_check_catches_each_kind(tmp_path):
    """The checker itself, on made-up records: each kind of duplicate makes it fail."""
    videos = tmp_path / "videos"
    videos.mkdir()
    jobs = [{"id": f"video_{i:032x}", "attempts": 1, "cache_hit": False,
             "info": {"sampling": {"dit_forwards": 4}}} for i in range(3)]
    for j in jobs:
        (videos / f"{j['id']}.mp4").write_bytes(b"x")
    assert duplicates(jobs, tmp_path, set(), 12, 4)["ok"]
    assert not duplicates(jobs, tmp_path, set(), 16, 4)["ok"]          # dit ran a job twice
    twice = [dict(jobs[0], attempts=2), *jobs[1:]]
    assert not duplicates(twice, tmp_path, set(), 12, 4)["ok"]         # a second attempt
    (videos / f".{jobs[0]['id']}.mp4.abc.tmp").write_bytes(b"x")
    bad = duplicates(jobs, tmp_path, set(), 12, 4)
    assert not bad["ok"] and bad["stray_files"]                         # a temp file left
    os.unlink(videos / f".{jobs[0]['id']}.mp4.abc.tmp")
    os.unlink(videos / f"{jobs[1]['id']}.mp4")
    assert duplicates(jobs, tmp_path, set(), 12, 4)["objects_missing"]


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 200):
        xs = list(rng.exponential(size=n))
        for q in (50, 95, 100):
            assert percentile(xs, q) == pytest.approx(np.percentile(xs, q))
    with pytest.raises(ValueError):
        percentile([], 50)
