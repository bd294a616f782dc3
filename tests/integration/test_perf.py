"""`t2vserve perf run` and the in-process baselines against the real tiny stack."""

import json

from t2vserve.perf.baseline import compare, run_baseline, run_in_process
from t2vserve.perf.commands import write_run
from t2vserve.perf.run import result_path, sweep


def test_sweep_baseline_and_report(server, tmp_path):
    result = sweep(server.profile, server.grpc_url, [1, 4], requests_per_window=2,
                   work_dir=tmp_path / "work", log=lambda s: None)
    assert [lv["concurrency"] for lv in result["levels"]] == [1, 4]
    for lv in result["levels"]:
        lat = lv["latency_ms"]
        assert lv["throughput"] > 0
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
        # 3 count windows of 2 requests at least, each request's latency from the export
        assert len(lv["latencies_ms"]) >= 6
        assert min(lv["latencies_ms"]) > 0
        # --bls-composing-models: every stage reported with its queue/compute split
        assert set(lv["models"]) == {"text_encoder", "dit", "vae_decoder", "video_encoder"}
        assert lv["models"]["dit"]["compute_ms"] > 0
        assert lv["models"]["vae_decoder"]["compute_ms"] > 0
        dit = lv["batching"]["dit"]
        # every t2v request made `steps` dit calls (8 by default)
        assert dit["requests"] >= 8 * len(lv["latencies_ms"])
    # four denoising loops at once share dit executions (step-level batching); one cannot
    assert result["levels"][0]["batching"]["dit"]["mean_requests_per_execution"] == 1.0
    assert result["levels"][1]["batching"]["dit"]["mean_requests_per_execution"] > 1.0

    result["baseline"] = run_baseline(server.profile, 1, warmup=0, log=lambda s: None)
    result["in_process"] = run_in_process(server.profile, 1, warmup=0, log=lambda s: None)
    cmp = compare(result)
    assert cmp["max_concurrency"] == 4
    assert cmp["throughput_ratio_at_max_concurrency"] == round(
        result["levels"][1]["throughput"] / result["baseline"]["throughput"], 3)
    result["comparison"] = cmp

    path = result_path(result, tmp_path / "results")
    assert path.name == f"{result['created'][:10]}-{result['host']}-cpu-tiny.json"
    write_run(result, path)
    assert json.loads(path.read_text())["levels"][1]["concurrency"] == 4
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = path.with_suffix(".md").read_text()
    assert "concurrency 4" in md and "WanPipeline" in md
