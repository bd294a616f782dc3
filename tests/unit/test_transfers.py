"""serve.transfers: memcpy bytes from a profiler trace, and the hook's on/off switch."""

import json

import torch

from t2vserve.serve import transfers

# the shape of torch.profiler's export_chrome_trace output with CUDA activity (kineto)
TRACE = {"traceEvents": [
    {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pageable -> Device)",
     "args": {"bytes": 4096, "device": 0}},
    {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pinned -> Device)",
     "args": {"bytes": 100, "device": 0}},
    {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoH (Device -> Pageable)",
     "args": {"bytes": 2048, "device": 0}},
    {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoD (Device -> Device)",
     "args": {"bytes": 512, "device": 0}},
    {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy PtoP (Device -> Device)",
     "args": {"bytes": 64, "device": 0}},
    # not copies: a memset, a kernel, the CPU-side cudaMemcpyAsync call, a flow event
    {"ph": "X", "cat": "gpu_memset", "name": "Memset (Device)", "args": {"bytes": 999}},
    {"ph": "X", "cat": "kernel", "name": "gemm", "args": {}},
    {"ph": "X", "cat": "cuda_runtime", "name": "cudaMemcpyAsync", "args": {"bytes": 777}},
    {"ph": "f", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pageable -> Device)",
     "args": {"bytes": 555}},
]}


def test_memcpy_bytes_sums_each_direction_of_copy_events_only():
    got = transfers.memcpy_bytes(TRACE)
    assert got == {"HtoD": 4196, "DtoH": 2048, "DtoD": 512, "PtoP": 64, "memcpy_events": 5,
                   "gpu_events": 7}  # the copies, the memset and the kernel


def test_memcpy_bytes_of_a_trace_without_copies_is_zero():
    assert transfers.memcpy_bytes({"traceEvents": [{"ph": "X", "cat": "cpu_op"}]}) == \
        {"HtoD": 0, "DtoH": 0, "DtoD": 0, "memcpy_events": 0, "gpu_events": 0}


def test_record_is_off_without_env_or_marker(tmp_path, monkeypatch):
    monkeypatch.delenv(transfers.ENV, raising=False)
    with transfers.record("dit", 1):
        torch.ones(4).sum()
    monkeypatch.setenv(transfers.ENV, str(tmp_path))
    with transfers.record("dit", 1):  # no marker file: off
        torch.ones(4).sum()
    assert list(tmp_path.iterdir()) == []


def test_record_writes_one_line_per_execute_while_the_marker_exists(tmp_path, monkeypatch):
    monkeypatch.setenv(transfers.ENV, str(tmp_path))
    (tmp_path / transfers.MARKER).touch()
    for n in (2, 3):
        with transfers.record("vae_decoder", n):
            torch.randn(64, 64) @ torch.randn(64, 64)
    files = list(tmp_path.glob("*.jsonl"))
    assert [f.name.split("-")[0] for f in files] == ["vae_decoder"]
    rows = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert [r["requests"] for r in rows] == [2, 3]
    # no CUDA in this process: a real measurement of nothing moved
    assert all(r["device"] == "cpu" and r["HtoD"] == r["DtoH"] == r["DtoD"] == 0 for r in rows)
    summary = transfers.per_model(transfers.read_records(tmp_path))
    assert summary["vae_decoder"]["executes"] == 2 and summary["vae_decoder"]["requests"] == 5
