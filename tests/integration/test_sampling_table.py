"""`t2vserve bench sampling` on a reduced set through a real tritonserver: 2 colour prompts x 1
seed, base at 8 steps (the reference), base at 3, a step cache and a CFG interval at 8, base
at 2 without CFG, at 64x64x5. The DiT forwards each row reports must be what its mode
implies, the reference against itself identical, a cache row cheaper than its base; the
measures and the targets' verdicts are checked on figures where the answer is known."""

import json

import numpy as np
import pytest

from t2vserve.perf.clip_quality import psnr_db, ssim
from t2vserve.perf.sampling_report import check_targets, markdown, merge, write
from t2vserve.perf.sampling_table import Row, run_table

from .conftest import make_profile

VARIANTS = {"base": {}, "cache-hi": {"cache": {"threshold": 0.5, "max_skips": 2}},
            "cfg-interval": {"guidance_interval": [0.0, 0.5]}}
ROWS = [Row("base 8", "base", 8), Row("base 3", "base", 3),
        Row("cache-hi 8", "cache-hi", 8), Row("cfg-interval 8", "cfg-interval", 8),
        Row("base 2, no CFG", "base", 2, 1.0)]


@pytest.fixture(scope="module")
def result(tiny_artifacts, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sampling-table")
    profile = make_profile(tmp, tiny_artifacts)
    return run_table(profile.path, rows=ROWS, variants=VARIANTS, prompts=2, seeds=(0,),
                     size=(64, 64, 5), work_dir=tmp / "work", calibration_prompts=2,
                     calibration_steps=10)


def test_rows_spend_the_forwards_their_mode_implies(result):
    rows = {r["row"]: r for r in result["rows"]}
    assert list(rows) == [r.label for r in ROWS] and result["reference"] == "base 8"
    assert all(r["videos"] == 2 and r["forwards_match_mode"] for r in rows.values())
    assert rows["base 8"]["dit_forwards_min"] == rows["base 8"]["dit_forwards_max"] == 16
    assert rows["base 3"]["dit_forwards_mean"] == 6
    assert rows["cfg-interval 8"]["dit_forwards_mean"] == 4 * 2 + 4  # CFG on steps 0..3
    assert rows["base 2, no CFG"]["dit_forwards_mean"] == 2
    assert rows["base 2, no CFG"]["guidance_scale"] == 1.0
    cached = rows["cache-hi 8"]
    assert cached["cached_steps_mean"] > 0
    assert cached["dit_forwards_mean"] == 2 * (8 - cached["cached_steps_mean"]) < 16
    assert rows["base 3"]["timesteps_first_video"] != rows["base 8"]["timesteps_first_video"]


def test_quality_is_measured_against_the_reference(result):
    ref, *others = result["rows"]
    assert ref["identical_clips"] == 2 and ref["psnr_db_mean"] is None
    assert ref["ssim_mean"] == pytest.approx(1.0, abs=1e-9) and ref["wall_ratio"] == 1.0
    for r in others:
        assert r["identical_clips"] < 2 and 5 < r["psnr_db_mean"] < 80
        assert 0 < r["ssim_min"] <= r["ssim_mean"] < 1.0
        assert r["wall_ratio"] > 0 and set(r["colour_hits_per_seed"]) == {"0"}
        assert 0 <= r["colour_hits_mean"] <= 2
    # three steps draw a coarser clip than the cache's eight
    rows = {r["row"]: r for r in others}
    assert rows["base 3"]["psnr_db_mean"] < rows["cache-hi 8"]["psnr_db_mean"]


def test_result_files_and_targets(result, tmp_path):
    assert [t["met"] for t in result["targets"]][1] is False  # no student in this run
    assert "leave it out" in result["targets"][1]["figures"][0]
    assert result["machine"]["cores"] and result["workload"]["concurrency"] == 1
    path = write(result, tmp_path)
    assert path.name.startswith("sampling-") and path.suffix == ".json"
    assert json.loads(path.read_text())["rows"][0]["row"] == "base 8"
    md = path.with_suffix(".md").read_text()
    assert "| cache-hi 8 | base, cache 0.5/2 |" in md and "**missed**" in md


def test_psnr_and_ssim():
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert psnr_db(clip, clip) == float("inf") and ssim(clip, clip) == pytest.approx(1.0)
    noisy = np.clip(clip + rng.normal(0, 8, clip.shape), 0, 255).astype(np.uint8)
    worse = np.clip(clip + rng.normal(0, 32, clip.shape), 0, 255).astype(np.uint8)
    assert 28 < psnr_db(noisy, clip) < 32  # sigma 8 (clipped): 20 log10(255/8) = 30.1 dB
    assert psnr_db(worse, clip) < psnr_db(noisy, clip)
    assert ssim(worse, clip) < ssim(noisy, clip) < 1.0
    # a constant brightness offset keeps the structure: SSIM barely moves, PSNR does
    flat = np.full((1, 32, 32, 3), 100, np.uint8)
    assert ssim(flat + 10, flat) > 0.95 and psnr_db(flat + 10, flat) == pytest.approx(28.13, abs=0.01)


def _row(label, variant, mode, steps, forwards, psnr, hits, cache=None, guidance=5.0):
    return {"row": label, "variant": variant, "mode": mode, "steps": steps,
            "guidance_scale": guidance, "guidance_interval": None, "cache": cache,
            "dit_forwards_mean": forwards, "psnr_db_mean": psnr, "psnr_db_min": psnr,
            "ssim_mean": 0.9, "colour_hits_mean": hits, "colour_hits_per_seed": {"0": hits}}


@pytest.mark.parametrize("forwards,psnr,hits,met", [
    (50, 30.0, 12, True),     # exactly 2x, 30 dB, 1 below
    (52, 35.0, 13, False),    # < 2x fewer
    (40, 29.9, 13, False),    # PSNR
    (40, 35.0, 11.5, False),  # 1.5 below
])
def test_cache_target_verdict(forwards, psnr, hits, met):
    table = [_row("base 50", "base", "base", 50, 100, None, 13),
             _row("cache 50", "cache", "base", 50, forwards, psnr, hits,
                  cache={"threshold": 0.1, "max_skips": 2})]
    assert check_targets(table, 16)[0]["met"] is met


@pytest.mark.parametrize("steps,guidance,hits,met", [
    (4, 1.0, 12, True), (4, 1.0, 11.5, False), (4, 3.0, 14, False), (6, 1.0, 14, False)])
def test_distilled_target_verdict(steps, guidance, hits, met):
    table = [_row("base 50", "base", "base", 50, 100, None, 13),
             _row("distilled", "distilled", "few_step", steps, steps, 20.0, hits,
                  guidance=guidance)]
    assert check_targets(table, 16)[1]["met"] is met


def test_a_later_run_merges_only_with_the_same_reference_clips(result):
    import copy

    later = copy.deepcopy(result)
    later["rows"] = [later["rows"][0], {**later["rows"][1], "row": "distilled 4"}]
    later["variants"] = {"distilled": {"lora": ["x"]}}
    merged = merge(result, later)
    assert [r["row"] for r in merged["rows"]] == [r.label for r in ROWS] + ["distilled 4"]
    assert merged["rows"][-1]["measured_in"]["created"] == later["created"]
    assert merged["distilled_skipped"] is None and len(merged["merged_runs"]) == 1
    assert "Measured in a later run (distilled 4)" in markdown(merged)
    later["reference_clips_sha256"] = list(reversed(later["reference_clips_sha256"]))
    with pytest.raises(ValueError, match="reference clips differ"):
        merge(result, later)
