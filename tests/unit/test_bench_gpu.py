"""`t2vserve bench gpu` on the tiny preset (CPU here), and the CUDA torch runner."""

import argparse
import copy
import json

import numpy as np
import pytest
import torch

from t2vserve.perf import bench_gpu
from t2vserve.perf.bench_commands import register
from t2vserve.perf.roofline import (
    dit_forward_flops, dit_tokens, text_encoder_flops, vae_decode_flops,
)
from t2vserve.runners.torch_cuda import CudaTorchRunner, use_sdpa_attention

DIT_IO = (["latents", "timestep", "prompt_embeds"], ["noise_pred"])
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="torch.cuda.is_available() is False")


@pytest.fixture(scope="module")
def bench():
    return bench_gpu.run_bench(preset="tiny", device="cpu", repeats=2, warmup=0, log=lambda s: None)


def _dit_inputs(tokens_hw=(8, 8), frames=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"latents": torch.randn(2, 48, frames, *tokens_hw, generator=g),
            "timestep": torch.tensor([999.0, 999.0]),
            "prompt_embeds": torch.randn(2, 256, 32, generator=g)}


def test_result_structure_and_files(bench, tmp_path):
    assert bench["kind"] == "t2vserve.bench.gpu"
    assert (bench["device"], bench["dtype"], bench["preset"]) == ("cpu", "fp32", "tiny")
    assert bench["machine"]["cores"] >= 1 and bench["torch"] == torch.__version__
    assert [(d["width"], d["height"], d["frames"]) for d in bench["dit"]] == \
        [(128, 128, 17), (192, 128, 33)]
    assert bench["peak"]["measured_tflops"] > 0 and bench["peak"]["datasheet"] is None
    assert bench["baseline"]["available"] and bench["baseline"]["reason"] is None
    path = bench_gpu.write_bench(bench, tmp_path)
    assert path.name == f"bench-gpu-cpu-{bench['date'][:10]}.json"
    assert json.loads(path.read_text())["dit"] == json.loads(json.dumps(bench["dit"]))
    md = path.with_suffix(".md").read_text()
    assert md.startswith("# bench gpu: tiny on cpu, fp32") and "| 128x128x17 | 80 |" in md


def test_flops_are_roofline_counts(bench):
    for d in bench["dit"]:
        assert d["tokens"] == dit_tokens(d["width"], d["height"], d["frames"], "tiny")
        assert d["text_len"] == 256  # the tiny preset's own
        assert d["flops"] == dit_forward_flops(d["tokens"], "tiny", 256, batch=2)["total"]
    for v in bench["vae_decode"]:
        assert v["flops"] == vae_decode_flops(v["width"], v["height"], v["frames"], "tiny")
    assert bench["text_encoder"]["flops"] == 2 * text_encoder_flops(256, "tiny")


def test_latency_throughput_and_mfu(bench):
    peak = bench["peak"]["measured_tflops"]
    rows = [d["ours"] for d in bench["dit"]] + [d["baseline"] for d in bench["dit"]]
    flops = [d["flops"] for d in bench["dit"]] * 2
    rows += bench["vae_decode"] + [bench["text_encoder"]]
    flops += [v["flops"] for v in bench["vae_decode"]] + [bench["text_encoder"]["flops"]]
    for row, f in zip(rows, flops):
        assert 0 < row["min_s"] <= row["median_s"]
        assert row["tflops"] == pytest.approx(f / row["median_s"] / 1e12)
        assert row["mfu_measured"] == pytest.approx(row["tflops"] / peak)
    for d in bench["dit"]:
        assert d["speedup"] == pytest.approx(d["baseline"]["median_s"] / d["ours"]["median_s"])


def test_ours_computes_the_baselines_forward(bench):
    # FP32 on CPU, both SDPA over the same weights and inputs: equal up to rounding
    # (bit-equal here); 1e-5 of the output's largest magnitude leaves room for other BLAS.
    for d in bench["dit"]:
        assert d["check"]["finite"] and d["check"]["max_rel"] <= 1e-5, d["check"]


def test_baseline_skipped_with_a_reason(monkeypatch):
    monkeypatch.setattr(bench_gpu, "_baseline_processor", lambda: (None, "no diffusers here"))
    r = bench_gpu.run_bench(preset="tiny", device="cpu", shapes=[(64, 64, 5)], repeats=1,
                            warmup=0, log=lambda s: None)
    assert r["baseline"] == dict(r["baseline"], available=False, reason="no diffusers here")
    assert "baseline" not in r["dit"][0] and "speedup" not in r["dit"][0]
    assert "Baseline skipped: no diffusers here." in bench_gpu.bench_markdown(r)


def test_cuda_runner_on_cpu_equals_torch_runner(tiny):
    from t2vserve.export.wrappers import DiTExport
    from t2vserve.runners import TorchRunner

    feed = _dit_inputs()
    ref = TorchRunner(DiTExport(copy.deepcopy(tiny.transformer)), *DIT_IO).run(feed)["noise_pred"]
    tr = copy.deepcopy(tiny.transformer)
    runner = CudaTorchRunner(DiTExport(tr), *DIT_IO, device="cpu", dtype="fp32")
    use_sdpa_attention(tr)
    out = runner.run(feed)["noise_pred"]
    assert out.dtype == torch.float32 and out.device == runner.device
    out, ref = out.numpy(), ref.numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6 * np.abs(ref).max())
    # BF16 compute, FP32 in and out: close to the FP32 forward, and a bigger error only
    # from rounding (BF16 keeps 8 bits of mantissa)
    bf = CudaTorchRunner(DiTExport(copy.deepcopy(tiny.transformer)), *DIT_IO, device="cpu",
                         dtype="bf16").run(feed)["noise_pred"]
    assert bf.dtype == torch.float32  # cast from BF16 on the device
    bf = bf.numpy()
    assert np.abs(bf - ref).max() <= 0.05 * np.abs(ref).max()


def test_cuda_runners_decode_as_the_torch_reference(tiny):
    from t2vserve.pipeline import decode_chunks, vae_runners

    z = torch.randn(1, 48, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    served = decode_chunks(*vae_runners(tiny.vae), z).numpy()
    vae = copy.deepcopy(tiny.vae)
    cuda_fp32 = vae_runners(vae, CudaTorchRunner, device="cpu", dtype="fp32")
    np.testing.assert_allclose(decode_chunks(*cuda_fp32, z).numpy(), served, rtol=0, atol=1e-5)
    # BF16: the chunk wrappers' cached dtype follows the cast, else the convs see FP32 input
    cuda_bf16 = vae_runners(vae, CudaTorchRunner, device="cpu", dtype="bf16")
    assert np.abs(decode_chunks(*cuda_bf16, z).numpy() - served).max() < 0.1


def test_errors():
    with pytest.raises(ValueError, match=r"preset 'wan2.2-ti2v-5b' is too big for the CPU: "
                                         r"one DiT forward at 7,410 tokens .*use --preset tiny"):
        bench_gpu.run_bench(preset="wan2.2-ti2v-5b", device="cpu")
    with pytest.raises(ValueError, match=r"cuda_graphs needs a CUDA device, got device 'cpu'"):
        bench_gpu.run_bench(preset="tiny", device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match=r"dtype must be one of \['bf16', 'fp16', 'fp32'\], got 'int8'"):
        CudaTorchRunner(torch.nn.Identity(), ["x"], ["y"], device="cpu", dtype="int8")
    with pytest.raises(KeyError, match="missing inputs"):
        CudaTorchRunner(torch.nn.Identity(), ["x"], ["y"], device="cpu", dtype="fp32").run({})


def test_device_names():
    assert bench_gpu.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    names = {"NVIDIA H100 80GB HBM3": "h100-sxm", "NVIDIA H100 PCIe": "h100-pcie",
             "NVIDIA H100 NVL": "h100-nvl", "NVIDIA H200": "h200", "NVIDIA L40S": "l40s",
             "NVIDIA L4": "l4", "NVIDIA A100-SXM4-80GB": "a100", "NVIDIA A10": "a10"}
    for name, key in names.items():
        assert bench_gpu.datasheet_peak(name)[0] == key, name
    assert bench_gpu.datasheet_peak("NVIDIA GeForce RTX 4090") is None


def test_cli_arguments():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "gpu", "--preset", "tiny", "--dtype", "fp16", "--compile",
                              "--cuda-graphs", "--no-baseline", "--repeats", "3",
                              "--shape", "64x64x5"])
    assert (args.preset, args.dtype, args.compile, args.cuda_graphs, args.no_baseline,
            args.repeats, args.shape, args.out_dir) == \
        ("tiny", "fp16", True, True, True, 3, ["64x64x5"], "perf/results")
    assert args.func.__name__ == "_bench_gpu"
    bad = parser.parse_args(["bench", "gpu", "--preset", "tiny", "--shape", "64x64"])
    with pytest.raises(ValueError, match=r"--shape takes WIDTHxHEIGHTxFRAMES"):
        bad.func(bad)


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_replay_equals_eager(tiny):
    from t2vserve.export.wrappers import DiTExport

    tr = copy.deepcopy(tiny.transformer)
    eager = CudaTorchRunner(DiTExport(tr), *DIT_IO, device="cuda", dtype="bf16")
    use_sdpa_attention(tr)
    graphed = CudaTorchRunner(eager.module, *DIT_IO, device="cuda", dtype="bf16", cuda_graphs=True)
    # two buckets, alternating, each replayed with fresh inputs
    for seed, hw in enumerate([(8, 8), (8, 12), (8, 8), (8, 12)]):
        feed = _dit_inputs(hw, seed=seed)
        ref = eager.run(feed)["noise_pred"].cpu().numpy()
        # cuBLAS may pick other kernels under capture; a stale or wrong bucket would be off
        # by the output's own size, not by BF16 rounding
        np.testing.assert_allclose(graphed.run(feed)["noise_pred"].cpu().numpy(), ref, rtol=0,
                                   atol=1e-2 * np.abs(ref).max())
    assert len(graphed._graphs) == 2


@pytest.mark.gpu
@needs_cuda
def test_bench_on_cuda_with_graphs(tmp_path):
    r = bench_gpu.run_bench(preset="tiny", repeats=2, warmup=1, cuda_graphs=True, log=lambda s: None)
    assert r["device_type"] == "cuda" and r["dtype"] == "bf16"
    for d in r["dit"]:
        # BF16, different attention kernels' rounding at most
        assert d["check"]["finite"] and d["check"]["max_rel"] <= 2e-2, d["check"]
    assert bench_gpu.write_bench(r, tmp_path).exists()
