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
    # the default target: at most 80 % busy at peak, and one server fewer would be over it
    # or miss the SLO
    assert doc["target_utilisation"] == 0.8 and doc["utilisation"] <= 0.8
    assert doc["servers"] == max(doc["servers_for_utilisation"], doc["servers_for_slo"])
    md = out.read_text()
    assert f"**{servers} servers**" in md
    achieved = f"{doc['utilisation'] * 100:.2f}".rstrip("0").rstrip(".")
    assert (f"utilisation {achieved} % at peak against a target of 80 %. "
            f"Binding constraint: **{doc['binding']}**") in md
    assert "target 80%" in printed and f"binding: {doc['binding']}" in printed
    for png in ("sizing-demand.png", "sizing-load.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    html = out.with_suffix(".html").read_text()
    assert "<table>" in html and "against a target of 80 %" in html
    options = json.loads(out.with_suffix(".json").read_text())["options"]
    assert options["target_utilisation"] == 0.8 and options["peak_per_hour"] == 10000


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


@pytest.mark.parametrize("bad", ["0", "-0.2", "1.01", "80", "nan", "eighty"])
def test_size_refuses_a_target_outside_0_1(bad, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["size", "--gpu", "h100-sxm", "--peak-per-hour", "100", "--target-utilisation", bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--target-utilisation" in err and "(0, 1]" in err


def test_size_target_us_spelling_and_one(tmp_path, capsys):
    # --target-utilization 1 sizes for the SLO alone: the 480p estimate's old 67 GPUs
    out = tmp_path / "est.md"
    assert main(["size", "--gpu", "h100-sxm", "--width", "832", "--height", "480", "--frames", "73",
                 "--steps", "50", "--peak-per-hour", "10000", "--p95-slo", "60",
                 "--target-utilization", "1", "--out", str(out)]) == 0
    doc = json.loads(out.with_suffix(".json").read_text())["sizing"]
    assert doc["target_utilisation"] == 1.0 and doc["servers"] == 67
    assert doc["binding"] == "p95 SLO" and 0.97 < doc["utilisation"] < 0.98
    assert "| utilisation < 100 % at peak (a queue that drains) | 66 |" in out.read_text()
