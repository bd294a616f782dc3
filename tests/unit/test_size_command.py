"""`t2vserve size`: measured (a committed `perf run` result) and first-principles modes."""

import json
import re
from pathlib import Path

import pytest

from t2vserve.cli import main

RESULTS = Path(__file__).resolve().parents[2] / "perf" / "results"


def _committed_result() -> Path:
    runs = sorted(p for p in RESULTS.glob("*.json") if json.loads(p.read_text()).get("kind") == "t2vserve.perf.run")
    assert runs, f"no committed `perf run` result in {RESULTS}"
    return runs[-1]


def test_size_from_the_committed_result(tmp_path, capsys):
    result = _committed_result()
    out = tmp_path / "sizing.md"
    assert main(["size", "--result", str(result), "--peak-per-hour", "10000", "--p95-slo", "60",
                 "--price-per-gpu-hour", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    servers = int(re.search(r"^servers: (\d+)", printed, re.M).group(1))
    doc = json.loads(out.with_suffix(".json").read_text())["sizing"]
    assert doc["servers"] == servers >= 1
    # enough capacity at that size: the measured throughput at the chosen concurrency
    # times the servers covers the peak, and the p95 meets the SLO in both models
    level = next(lv for lv in json.loads(result.read_text())["levels"]
                 if lv["concurrency"] == doc["concurrency"])
    assert servers * level["throughput"] * 3600 > 10000 * 0.9
    assert doc["p95_s"] <= 60 and doc["sim_p95_s"] <= 60 * 1.1
    assert doc["cost_per_hour"] == pytest.approx(3 * servers)
    md = out.read_text()
    assert f"**{servers} servers**" in md
    for png in ("sizing-demand.png", "sizing-load.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert "<table>" in out.with_suffix(".html").read_text()


def test_size_first_principles_480p_and_an_impossible_slo(tmp_path, capsys):
    out = tmp_path / "est.md"
    assert main(["size", "--gpu", "h100-sxm", "--width", "832", "--height", "480", "--frames", "73",
                 "--steps", "50", "--peak-per-hour", "1000", "--p95-slo", "60",
                 "--out", str(out)]) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    est = doc["estimate"]
    assert "estimate" in est["label"]
    # each GPU makes 3600 / seconds_per_video videos an hour; the fleet needs more than that
    assert doc["sizing"]["servers"] >= 1000 / est["videos_per_gpu_hour"]
    assert "estimate (roofline, not measured)" in out.read_text()
    capsys.readouterr()
    # 1280x704x121 at 50 steps takes minutes on one H100: a 60 s p95 cannot be met
    assert main(["size", "--gpu", "h100-sxm", "--peak-per-hour", "1000", "--p95-slo", "60",
                 "--out", str(tmp_path / "x.md")]) == 2
    assert "below the service time p95" in capsys.readouterr().err


def test_size_needs_exactly_one_source(capsys):
    assert main(["size", "--peak-per-hour", "100"]) == 2
    assert "give --result" in capsys.readouterr().err
