"""Experiments without a server: the assignment, the batch's per-variant planning and resume,
and the report's statistics against scipy."""

import csv
import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from t2vserve.cli import main
from t2vserve.client.batch import Arms, read_manifest, run_batch
from t2vserve.client.core import Video
from t2vserve.client.experiment import (ExperimentError, assign, parse_split, report,
                                        two_proportion_test, wilson_interval)

QC = {"mean_luma": 100.0, "black_frame_ratio": 0.0, "frozen_frame_ratio": 0.0,
      "temporal_flicker": 0.0}


def test_parse_split_keeps_order_and_normalises_and_names_bad_entries():
    assert parse_split("a=0.5,b=0.5") == {"a": 0.5, "b": 0.5}
    assert parse_split("cached=1, base=3") == {"cached": 0.25, "base": 0.75}
    for text, words in [("a=0.5,b", "NAME=WEIGHT"), ("a b=1", "NAME=WEIGHT"),
                        ("a=1,a=2", "'a' is given twice"), ("a=0,b=1", "positive number"),
                        ("a=x", "positive number, got 'x'"), ("a=nan", "positive number")]:
        with pytest.raises(ExperimentError, match=words):
            parse_split(text)


def test_assignment_is_fixed_by_sku_and_experiment_and_follows_the_weights():
    split = parse_split("a=0.5,b=0.5")
    # fixed values (sha256 of "spring\0SKU-i", its first 8 bytes against 0.5 x 2^64): a
    # release that changed them would reassign running experiments
    assert [assign("spring", f"SKU-{i}", split) for i in range(8)] == \
        ["b", "b", "a", "a", "a", "a", "a", "a"]
    skus = [f"SKU-{i}" for i in range(10000)]
    first = [assign("spring", s, split) for s in skus]
    assert first == [assign("spring", s, split) for s in skus]
    assert abs(first.count("a") / len(skus) - 0.5) < 0.02
    other = [assign("autumn", s, split) for s in skus]  # another experiment reshuffles
    assert 0.4 < sum(x != y for x, y in zip(first, other)) / len(skus) < 0.6
    uneven = [assign("spring", s, parse_split("a=0.1,b=0.9")) for s in skus]
    assert abs(uneven.count("a") / len(skus) - 0.1) < 0.01


class VariantClient:
    """Stands in for the server: the clip and the info name the variant asked for."""

    def __init__(self, calls):
        self.calls = calls

    def generate(self, prompt, *, seed, timeout=None, model_variant=None, **params):
        self.calls.append((prompt, model_variant))
        info = {"model": f"tiny@000000000000/{model_variant}", "variant": model_variant}
        return Video(mp4=f"{prompt} {model_variant} {seed}".encode() * 50, qc=dict(QC), info=info)

    def close(self):
        pass


def _batch(tmp_path, arms, calls, out="videos"):
    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps({"sku": f"S{i}", "prompt": f"item {i}"}) + "\n"
                               for i in range(6)) + '{"sku": "S0", "prompt": "again"}\n')
    return run_batch(catalog, tmp_path / out, url="unused", concurrency=2, arms=arms,
                     stream=open(os.devnull, "w"), client_factory=lambda u: VariantClient(calls))


def test_a_split_batch_records_each_skus_variant_and_a_rerun_keeps_it(tmp_path):
    arms = Arms("spring", ("a", "b"), parse_split("a=0.5,b=0.5"))
    calls = []
    summary = _batch(tmp_path, arms, calls)
    assert (summary["ok"], summary["failed"]) == (6, 1)  # the duplicate line
    state = read_manifest(tmp_path / "videos" / "manifest.jsonl")
    assert set(state) == {(f"S{i}", assign("spring", f"S{i}", arms.split)) for i in range(6)}
    for (sku, variant), r in state.items():
        assert r["path"] == f"{sku}.{variant}.mp4" and r["model"].endswith("/" + variant)
        assert (r["served_variant"], r["experiment"], r["split"]) == (variant, "spring",
                                                                      "a=0.5,b=0.5")
    assert sorted(v for _, v in calls) == sorted(v for _, v in state)
    calls.clear()
    assert _batch(tmp_path, arms, calls)["skipped"] == 6 and calls == []
    # another experiment name or split in the same folder would reassign: refused
    with pytest.raises(ExperimentError, match="holds experiment 'spring' \\(split a=0.5,b=0.5\\)"):
        _batch(tmp_path, Arms("autumn", ("a", "b"), arms.split), calls)


def test_all_variants_makes_one_clip_per_variant_and_resumes_per_pair(tmp_path):
    arms = Arms("grid", ("a", "b", "c"))
    calls = []
    assert _batch(tmp_path, arms, calls)["ok"] == 18
    out = tmp_path / "videos"
    assert sorted(p.name for p in out.glob("S1.*")) == ["S1.a.mp4", "S1.b.mp4", "S1.c.mp4"]
    (out / "S1.b.mp4").write_bytes(b"torn")  # one pair's clip is no longer what was recorded
    calls.clear()
    summary = _batch(tmp_path, arms, calls)
    assert (summary["skipped"], summary["ok"], calls) == (17, 1, [("item 1", "b")])


def _manifest(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _synthetic_outcomes(tmp_path):
    """Two variants over 40 SKUs with different true rates (a seeded generator), split
    b=0.5,a=0.5: b is the control."""
    rng = np.random.default_rng(7)
    rows, outcomes = [], []
    for i in range(40):
        variant = "a" if i % 2 else "b"
        status = "failed" if i in (3, 8) else ("review" if i == 5 else "ok")
        rows.append({"sku": f"S{i}", "variant": variant, "status": status, "split": "b=0.5,a=0.5",
                     "latency_s": None if status == "failed" else 1.0 + i / 10})
        n = int(rng.integers(200, 2000))
        outcomes.append((f"S{i}", n, int(rng.binomial(n, 0.03 if variant == "a" else 0.045))))
    manifest = _manifest(tmp_path / "manifest.jsonl", rows)
    path = tmp_path / "outcomes.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sku", "impressions", "conversions"])
        w.writerows(outcomes + [("NOT-IN-BATCH", 10, 1)])
    return manifest, path, rows, outcomes


def test_the_report_matches_scipy_on_a_synthetic_outcomes_file(tmp_path):
    manifest, path, rows, outcomes = _synthetic_outcomes(tmp_path)
    r = report(manifest, path)
    a, b = r["variants"]  # the split's first, b, is the control
    assert (a["variant"], b["variant"]) == ("b", "a")
    assert (a["clips"], a["failed"], a["review"]) == (19, 1, 0)  # S8 failed
    assert (b["clips"], b["failed"], b["review"]) == (19, 1, 1)  # S3 failed, S5 for review
    lat = [x["latency_s"] for x in rows if x["variant"] == "a" and x["latency_s"] is not None]
    assert b["latency_p95_s"] == pytest.approx(np.percentile(lat, 95), abs=1e-12)
    assert b["latency_p50_s"] == pytest.approx(np.percentile(lat, 50), abs=1e-12)
    assert r["unmatched_skus"] == ["NOT-IN-BATCH"]
    table = []
    for v in (a, b):
        n = sum(o[1] for o, x in zip(outcomes, rows) if x["variant"] == v["variant"])
        x = sum(o[2] for o, y in zip(outcomes, rows) if y["variant"] == v["variant"])
        assert (v["impressions"], v["conversions"]) == (n, x)
        table.append([x, n - x])
        ci = stats.binomtest(x, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert v["rate_ci95"] == pytest.approx((ci.low, ci.high), abs=1e-9)
    (t,) = r["tests"]
    assert (t["control"], t["variant"]) == ("b", "a")
    chi2 = stats.chi2_contingency(table, correction=False)
    assert t["z"] ** 2 == pytest.approx(chi2.statistic, abs=1e-9)
    assert t["p_value"] == pytest.approx(chi2.pvalue, abs=1e-9)
    # and the z itself, by hand with scipy's normal tail
    (x1, f1), (x2, f2) = table
    n1, n2 = x1 + f1, x2 + f2
    pooled = (x1 + x2) / (n1 + n2)
    z = (x2 / n2 - x1 / n1) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    assert t["z"] == pytest.approx(z, abs=1e-9)
    assert t["p_value"] == pytest.approx(2 * stats.norm.sf(abs(z)), abs=1e-9)
    assert t["p_value"] < 0.05  # 3 % against 4.5 % over ~20,000 impressions each: a real gap


def test_degenerate_proportions_have_no_test_and_wilson_stays_in_0_1():
    assert two_proportion_test(0, 100, 0, 50).z is None
    t = two_proportion_test(5, 0, 1, 10)  # no trials: None, not NaN (JSON has no NaN)
    assert (t.z, t.p_value, t.difference, t.difference_ci) == (None, None, None, None)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1)
    assert wilson_interval(0, 0) is None


def test_bad_outcomes_are_refused_with_file_and_line(tmp_path):
    manifest = _manifest(tmp_path / "m.jsonl", [
        {"sku": "S1", "variant": "a", "status": "ok", "latency_s": 1},
        {"sku": "S1", "variant": "b", "status": "ok", "latency_s": 1}])
    bad = tmp_path / "o.csv"
    for text, words in [("sku,impressions\nS1,3\n", "missing conversions"),
                        ("sku,impressions,conversions,variant\nS1,3,4,a\n",
                         "o.csv:2: need 0 <= conversions <= impressions, got 4 of 3"),
                        ("sku,impressions,conversions,variant\nS1,3.5,1,a\n",
                         "o.csv:2: impressions must be a whole number"),
                        ("sku,impressions,conversions\nS1,3,1\n",
                         "o.csv:2: sku 'S1' has clips of several variants \\(a, b\\)")]:
        bad.write_text(text)
        with pytest.raises(ExperimentError, match=words):
            report(manifest, bad)


def test_the_cli_prints_the_table_and_the_json(tmp_path, capsys):
    manifest, path, _, _ = _synthetic_outcomes(tmp_path)
    assert main(["experiment", "report", str(manifest), "--outcomes", str(path)]) == 0
    text = capsys.readouterr().out
    assert "a vs b: difference" in text and "pooled two-proportion z-test" in text
    assert main(["experiment", "report", str(manifest), "--json", "--control", "a"]) == 0
    assert [v["variant"] for v in json.loads(capsys.readouterr().out)["variants"]] == ["a", "b"]
    assert main(["experiment", "report", str(manifest), "--control", "c"]) == 2
    assert "--control 'c': the manifest's variants are b, a" in capsys.readouterr().err
    assert main(["experiment", "report", str(tmp_path / "none.jsonl")]) == 2
    assert "no such manifest" in capsys.readouterr().err
