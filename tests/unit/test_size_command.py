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
                 "--mode", "base", "--steps", "50", "--peak-per-hour", "1000", "--p95-slo", "60",
                 "--out", str(out)]) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    est = doc["estimate"]
    assert "estimate" in est["label"]
    # each GPU makes 3600 / seconds_per_video videos an hour; the fleet needs more than that
    assert doc["sizing"]["servers"] >= 1000 / est["videos_per_gpu_hour"]
    assert "estimate (roofline, not measured)" in out.read_text()
    capsys.readouterr()
    # 1280x704x121 at 50 steps takes minutes on one H100: a 60 s p95 cannot be met
    assert main(["size", "--gpu", "h100-sxm", "--mode", "base", "--peak-per-hour", "1000",
                 "--p95-slo", "60", "--out", str(tmp_path / "x.md")]) == 2
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
                 "--mode", "base", "--steps", "50", "--peak-per-hour", "10000", "--p95-slo", "60",
                 "--target-utilization", "1", "--out", str(out)]) == 0
    doc = json.loads(out.with_suffix(".json").read_text())["sizing"]
    assert doc["target_utilisation"] == 1.0 and doc["servers"] == 67
    assert doc["binding"] == "p95 SLO" and 0.97 < doc["utilisation"] < 0.98
    assert "| utilisation < 100 % at peak (a queue that drains) | 66 |" in out.read_text()


# ---- fleet estimates per sampling mode -------------------------------------------------------

SHOW = ["size", "--gpu", "h100-sxm", "--width", "1280", "--height", "704", "--frames", "121",
        "--peak-per-hour", "10000", "--price-per-gpu-hour", "2.5"]


def _rows(md: str) -> dict:
    # the side-by-side table's rows by mode
    rows = [line.strip("|").split("|") for line in md.splitlines()
            if line.startswith("| base |") or line.startswith("| cached |")
            or line.startswith("| distilled |")]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows}


def test_side_by_side_follows_the_single_mode_runs(tmp_path, capsys):
    args = SHOW + ["--p95-slo", "600"]
    assert main(args + ["--out", str(tmp_path / "modes.md")]) == 0
    md = (tmp_path / "modes.md").read_text()
    rows = _rows(md)
    assert list(rows) == ["base", "cached", "distilled"]
    doc = json.loads((tmp_path / "modes.md").with_suffix(".json").read_text())
    assert [m["mode"] for m in doc["modes"]] == ["base", "cached", "distilled"]
    assert "2x fewer forwards" in md and "assumed" in md  # the cache saving is named an assumption
    for mode, m in zip(("base", "cached", "distilled"), doc["modes"]):
        single = tmp_path / f"{mode}.md"
        assert main(args + ["--mode", mode, "--out", str(single)]) == 0
        one = json.loads(single.with_suffix(".json").read_text())
        assert m["estimate"] == one["estimate"]
        assert m["sizing"]["servers"] == one["sizing"]["servers"]
        assert m["sizing"]["utilisation"] == one["sizing"]["utilisation"]
        steps, forwards, seconds, share, gpus = rows[mode][:5]
        assert int(gpus) == one["sizing"]["servers"]
        assert float(forwards) == one["estimate"]["dit_forwards"]
        assert float(seconds) == round(one["estimate"]["seconds_per_video"], 2)
        cost = float(rows[mode][-1].replace(",", ""))
        assert cost == pytest.approx(one["sizing"]["cost_per_1000_videos"], abs=0.005)
    forwards = [m["estimate"]["dit_forwards"] for m in doc["modes"]]
    assert forwards == [100, 50, 4]
    servers = [m["sizing"]["servers"] for m in doc["modes"]]
    assert servers[0] > servers[1] > servers[2] >= 1


def test_side_by_side_at_the_default_slo_names_the_unreachable_modes(tmp_path, capsys):
    assert main(SHOW + ["--distilled-steps", "3", "--out", str(tmp_path / "m.md")]) == 0
    doc = json.loads((tmp_path / "m.md").with_suffix(".json").read_text())
    base, cached, few = doc["modes"]
    # 137 s and 71 s per video cannot meet a 60 s p95: the row gives the utilisation fleet
    assert base["sizing"] is None and "below the service time p95" in base["unreachable"]
    assert cached["sizing"] is None
    assert few["sizing"]["servers"] == few["servers_for_utilisation"]
    assert few["estimate"]["steps"] == 3 and few["estimate"]["dit_forwards"] == 3
    rows = _rows((tmp_path / "m.md").read_text())
    assert int(rows["base"][4]) == base["servers_for_utilisation"]
    assert rows["base"][6].startswith("unreachable: 136.7 s per video > 60 s")
    assert "servers by mode: base:" in capsys.readouterr().out


def _table(tmp_path, entries) -> Path:
    path = tmp_path / "sampling.json"
    path.write_text(json.dumps({"modes": entries}))
    return path


BASE50 = {"name": "base 50", "mode": "base", "steps": 50, "dit_forwards": 100}
CACHE = {"name": "cache 0.1", "mode": "base", "cache": {"threshold": 0.1}, "steps": 50,
         "dit_forwards": 40}
STUDENT = {"name": "student 4", "mode": "few_step", "steps": 4, "dit_forwards": 4}


def test_from_result_takes_the_measured_cache_saving(tmp_path, capsys):
    table = _table(tmp_path, [BASE50, CACHE, STUDENT])
    out = tmp_path / "m.md"
    assert main(SHOW + ["--steps", "20", "--from-result", str(table), "--out", str(out)]) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    base, cached, few = (m["estimate"] for m in doc["modes"])
    assert base["dit_forwards"] == 40 and cached["dit_forwards"] == 40 / 2.5  # 100/40 measured
    assert few["dit_forwards"] == 4
    md = out.read_text()
    assert "measured: cache 0.1 spent 40 forwards where the base at 50 steps spends 100" in md
    assert "assumed" not in md.split("Where each mode")[1].split("GPUs:")[0].split("cached:")[1]
    # several cached entries: --cache-setting picks one, and is required
    table = _table(tmp_path, [BASE50, CACHE, {**CACHE, "name": "cache 0.3", "dit_forwards": 25}])
    capsys.readouterr()
    assert main(SHOW + ["--from-result", str(table), "--out", str(out)]) == 2
    assert "pick one with --cache-setting: cache 0.1, cache 0.3" in capsys.readouterr().err
    assert main(SHOW + ["--mode", "cached", "--from-result", str(table), "--cache-setting",
                        "cache 0.3", "--p95-slo", "600", "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["estimate"]["dit_forwards"] == 25
    capsys.readouterr()
    assert main(SHOW + ["--from-result", str(table), "--cache-setting", "cache 9",
                        "--out", str(out)]) == 2
    assert "cached entries: cache 0.1, cache 0.3" in capsys.readouterr().err


def test_from_result_reads_a_t2v_info_and_refuses_a_perf_run(tmp_path, capsys):
    info = tmp_path / "info.json"
    info.write_text(json.dumps({"variant": "cached", "request": {"steps": 12},
                                "sampling": {"mode": "base", "dit_forwards": 16,
                                             "cached_steps": [2, 4, 6, 8]}}))
    out = tmp_path / "m.md"
    assert main(SHOW + ["--mode", "cached", "--steps", "50", "--from-result", str(info),
                        "--p95-slo", "600", "--out", str(out)]) == 0
    est = json.loads(out.with_suffix(".json").read_text())["estimate"]
    assert est["dit_forwards"] == pytest.approx(100 * 16 / 24)
    capsys.readouterr()
    assert main(SHOW + ["--from-result", str(_committed_result()), "--out", str(out)]) == 2
    assert "a `perf run` result records no DiT forwards per video" in capsys.readouterr().err


def test_forwards_given_directly(tmp_path, capsys):
    out = tmp_path / "f.md"
    assert main(SHOW + ["--forwards", "30", "--p95-slo", "600", "--out", str(out)]) == 0
    est = json.loads(out.with_suffix(".json").read_text())["estimate"]
    assert est["dit_forwards"] == 30 and est["mode"] == "given"
    assert "| DiT (30 forwards) |" in out.read_text()


@pytest.mark.parametrize("extra, message", [
    (["--mode", "base", "--cache-saving", "2"],
     "--cache-saving applies to --mode cached (or to the side-by-side table, without --mode), "
     "not --mode base"),
    (["--mode", "distilled", "--steps", "4"], "--steps applies to --mode base or cached"),
    (["--mode", "distilled", "--no-cfg"], "--no-cfg applies to --mode base or cached"),
    (["--mode", "cached", "--distilled-steps", "3"], "--distilled-steps applies to --mode distilled"),
    (["--forwards", "10", "--mode", "base"], "--forwards gives the DiT forwards per video "
                                              "directly; drop --mode"),
    (["--forwards", "10", "--cache-saving", "2"], "drop --cache-saving"),
    (["--cfg-interval", "0.5", "--no-cfg"], "--cfg-interval says on which steps CFG runs"),
    (["--cache-setting", "x"], "--cache-setting picks a cached entry of --from-result"),
    (["--cfg-interval", "1.5"], "the CFG interval must be a fraction of the steps in (0, 1]"),
    (["--cache-saving", "0.5"], "cache saving must be a factor >= 1"),
    (["--distilled-steps", "0"], "distilled steps must be a positive int, got 0"),
])
def test_bad_mode_options_exit_2_naming_what_is_allowed(extra, message, tmp_path, capsys):
    assert main(SHOW + extra + ["--out", str(tmp_path / "x.md")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.md").exists()


def test_mode_options_need_an_estimate(capsys):
    assert main(["size", "--result", str(_committed_result()), "--peak-per-hour", "100",
                 "--mode", "distilled", "--cache-saving", "2"]) == 2
    assert ("--mode, --cache-saving: only with --gpu; a measured service curve (--result) "
            "already holds the sampling") in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(SHOW + ["--mode", "fast"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--mode" in err and "'base', 'cached', 'distilled'" in err
