"""`t2vserve bench encoder`: x264 held to AVX2 against its own detection."""

import json

from t2vserve import cli
from t2vserve.media import decode_mp4, encode_mp4
from t2vserve.perf import bench_encoder


def test_bench_measures_both_settings_and_writes_its_files(tmp_path):
    result = bench_encoder.run_bench(sizes=[(64, 64, 5), (96, 64, 9)], repeats=3,
                                     noisy_repeats=6, log=lambda s: None)
    assert [(r["size"], r["repeats"]) for r in result["rows"]] == \
        [("64x64x5", 3), ("96x64x9", 3), ("64x64x5 noisy", 6)]
    for row in result["rows"]:
        assert row["capped_ms"] > 0 and row["x264_auto_ms"] > 0
        assert row["capped_over_auto"] == round(row["capped_ms"] / row["x264_auto_ms"], 3)
        assert row["capped_distinct_outputs"] == 1  # the point of the cap
        assert 1 <= row["x264_auto_distinct_outputs"] <= row["repeats"]
    path = bench_encoder.write_bench(result, tmp_path)
    assert json.loads(path.read_text())["rows"] == result["rows"]
    md = path.with_suffix(".md").read_text()
    assert "| 96x64x9 |" in md and result["machine"]["cpu"] in md


def test_bench_clip_is_a_product_clip_at_the_asked_size():
    clip = bench_encoder._clip(128, 64, 5)
    assert clip.shape == (5, 64, 128, 3) and clip.dtype.name == "uint8"
    assert clip.std() > 10  # a picture, not a flat frame


def test_cli_runs_and_refuses_bad_shapes(tmp_path, capsys):
    assert cli.main(["bench", "encoder", "--shape", "64x64x5", "--repeats", "1",
                     "--noisy-repeats", "0", "--out-dir", str(tmp_path)]) == 0
    written = list(tmp_path.glob("encoder-*.json"))
    assert len(written) == 1 and "| 64x64x5 |" in capsys.readouterr().out
    assert cli.main(["bench", "encoder", "--shape", "100x64x5"]) == 2
    assert "multiples of 8" in capsys.readouterr().err
    assert cli.main(["bench", "encoder", "--repeats", "0"]) == 2
    assert "--repeats must be >= 1, got 0" in capsys.readouterr().err
    assert cli.main(["bench", "encoder", "--noisy-repeats", "-1"]) == 2
    assert "--noisy-repeats must be >= 0, got -1" in capsys.readouterr().err


def test_encode_mp4_asm_settings_give_valid_clips():
    clip = bench_encoder._clip(64, 64, 5)
    for asm in ("host", "auto"):
        frames, fps = decode_mp4(encode_mp4(clip, 24, asm=asm))
        assert frames.shape == clip.shape and fps == 24.0
