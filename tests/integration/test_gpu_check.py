"""`t2vserve gpu-check --preset tiny --device cpu`: the GPU check's own script, end to end on
this CPU (real tritonserver on free loopback ports, real perf_analyzer), so it cannot rot."""

import json
import subprocess
import sys

import pytest

from t2vserve.perf.gpu_check import CONCURRENCY, PHASE_BUDGET_S, PLANS
from t2vserve.perf.gpu_check_report import STAGE_MODELS

PHASES = tuple(PHASE_BUDGET_S)


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    proc = subprocess.run(
        [sys.executable, "-m", "t2vserve.cli", "gpu-check", "--preset", "tiny", "--device", "cpu",
         "--out-dir", str(out), "--work-dir", str(out / "work")],
        capture_output=True, text=True, timeout=600)
    written = sorted(out.glob("gpu-cpu-*.json"))
    assert written, f"no result written (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc, json.loads(written[0].read_text()), written[0]


def test_every_phase_ran_and_the_command_succeeded(check):
    proc, result, _ = check
    assert "error" not in result, result["error"]
    assert result["failed_phases"] == {}
    assert [p["name"] for p in result["timing"]["phases"]] == list(PHASES)
    assert all(p["ok"] for p in result["timing"]["phases"]), result["timing"]["phases"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    for phase in PHASES:  # every phase says so on stderr
        assert f"] {phase}: done" in proc.stderr
    assert result["preset"] == "tiny" and result["device"] == "cpu"
    assert result["machine"]["cores"] >= 1 and result["versions"]["torch"]
    assert "tensorrt" in result["skipped"] and result["skipped"]["tensorrt"]


def test_the_profile_serves_runtime_torch_on_the_cpu(check):
    profile = check[1]["phases"]["artifacts"]["profile"]
    assert {c["runtime"] for c in profile["components"].values()} == {"torch"}
    assert all("gpus" not in c for c in profile["components"].values())
    assert profile["limits"]["sizes"] == PLANS["tiny"]["sizes"]


def test_requests_succeeded_with_the_requested_frames(check):
    rows = check[1]["phases"]["requests"]
    assert [(r["width"], r["height"], r["num_frames"], r["steps"]) for r in rows] == \
        [tuple(q) for q in PLANS["tiny"]["requests"]]
    for r in rows:
        assert r["ok"]
        assert r["decoded"]["frames"] == r["num_frames"]
        assert (r["decoded"]["width"], r["decoded"]["height"]) == (r["width"], r["height"])
        assert r["dit_calls"] == r["steps"]


def test_transfer_bytes_were_measured_in_every_stage_process(check):
    for r in check[1]["phases"]["requests"]:
        by_model = r["transfer_bytes"]
        # video_encoder and t2v too: every model's execute runs under the hook
        assert set(by_model) == set(STAGE_MODELS), by_model
        for model, b in by_model.items():
            assert b["executes"] >= 1 and b["requests"] >= 1
            # no device here: the profiler saw no copies, a measured zero
            assert b["device"] == "cpu" and b["HtoD"] == b["DtoH"] == b["DtoD"] == 0
            assert "warnings" not in b, b["warnings"]
        assert by_model["dit"]["requests"] == r["steps"]  # one dit request per step


def test_perf_analyzer_measured_both_concurrencies(check):
    levels = check[1]["phases"]["perf_analyzer"]["levels"]
    assert [lv["concurrency"] for lv in levels] == list(CONCURRENCY)
    for lv in levels:
        assert lv["throughput"] > 0
        assert lv["latency_ms"]["p50"] > 0 and lv["latencies_ms"]
        assert lv["batching"]["dit"]["requests"] > 0


def test_mfu_at_the_tiny_shapes(check):
    mfu = check[1]["phases"]["mfu"]
    assert mfu["peak_tflops"]["measured"] > 0
    assert [(d["width"], d["height"], d["frames"]) for d in mfu["dit"]] == \
        [(128, 128, 17), (192, 128, 33)]
    for d in mfu["dit"]:
        # below 1 against a true peak; on this shared 2-core CPU the measured matmul peak is
        # a short sample that another process can slow (seen: 1.03 under a parallel test
        # run), so the bound here only catches a FLOP count or a timing off by a factor
        assert d["tokens"] > 0 and d["latency_ms"] > 0 and 0 < d["mfu_measured"] < 1.5


def test_memory_is_reported_per_stage_process_as_no_gpu(check):
    result = check[1]
    mem = result["phases"]["memory_after_requests"]
    assert mem["gpu"].startswith("no GPU")
    assert set(mem["stage_processes"]) == set(STAGE_MODELS)
    for m in mem["stage_processes"].values():
        assert m["pids"] and m["host_rss_mib"] > 0 and m["gpu_mib"] is None
    assert result["skipped"]["gpu_memory"].startswith("no GPU")


def test_markdown_summary_is_written(check):
    md = check[2].with_suffix(".md").read_text()
    assert md.startswith("# gpu-check: tiny on CPU only")
    for heading in ("DiT forward", "Requests over gRPC", "perf_analyzer", "Memory per stage"):
        assert heading in md
