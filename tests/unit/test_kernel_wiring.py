"""The fused kernels in the torch runtime (`components.<c>.kernels: triton`, runners.fused)
and `t2vserve bench kernels`."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from t2vserve.profile import ProfileError, load_profile
from t2vserve.runners.fused import FusedAttnProcessor, KernelOps, check_device, use_kernels
from t2vserve.runners.torch_cuda import CudaTorchRunner

ROOT = Path(__file__).resolve().parents[2]
DIT_IO = (["latents", "timestep", "prompt_embeds"], ["noise_pred"])

def _kernel_device() -> str:
    """Where the Triton kernels run in this session: the CPU under the interpreter (tests/
    conftest.py sets TRITON_INTERPRET=1 before any kernel module loads on a machine without a
    GPU), else CUDA."""
    return "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


def test_triton_kernels_give_the_same_dit_and_vae_output_as_off(tiny):
    """Issue 25, Show 2: the tiny preset's DiT and VAE decode through CudaTorchRunner with
    kernels triton and off, FP32: the fused paths differ by reduction order only, within
    1e-5 of the output's scale (measured here: 4e-7 for the DiT, 2e-6 for the frames)."""
    from t2vserve.export.wrappers import DiTExport
    from t2vserve.pipeline import decode_chunks, vae_runners
    from t2vserve.runners.torch_cuda import use_sdpa_attention

    device = _kernel_device()
    g = torch.Generator().manual_seed(0)
    feed = {"latents": torch.randn(2, 48, 2, 4, 4, generator=g),
            "timestep": torch.tensor([999.0, 500.0]),
            "prompt_embeds": torch.randn(2, 256, 32, generator=g)}
    z = torch.randn(1, 48, 1, 2, 2, generator=g)  # the first chunk: every norm site once
    dit, frames = {}, {}
    for kernels in ("off", "triton"):
        wrapper = DiTExport(copy.deepcopy(tiny.transformer))
        use_sdpa_attention(wrapper.transformer)  # as serve's _on_device: after DiTExport
        runner = CudaTorchRunner(wrapper, *DIT_IO, device=device, dtype="fp32", kernels=kernels)
        dit[kernels] = runner.run(feed)["noise_pred"].cpu()
        frames[kernels] = decode_chunks(*vae_runners(copy.deepcopy(tiny.vae), CudaTorchRunner,
                                                     device=device, dtype="fp32",
                                                     kernels=kernels), z).cpu()
    for out, shape in ((dit, (2, 48, 2, 4, 4)), (frames, (1, 3, 1, 32, 32))):
        assert tuple(out["off"].shape) == shape
        scale = out["off"].abs().max().item()
        assert scale > 0.1  # not trivially zero
        assert (out["triton"] - out["off"]).abs().max().item() <= 1e-5 * scale


def test_wiring_with_the_torch_references_is_exact(tiny):
    """The replacement forwards compute what the modules do: with the kernels' torch
    references in place of the kernels, the DiT and the VAE decode are bit-equal to off, and
    every fused site is reached (the references are counted)."""
    from t2vserve.export.wrappers import DiTExport
    from t2vserve.pipeline import decode_chunks, vae_runners
    from t2vserve.runners import TorchRunner
    from t2vserve.runners.torch_cuda import use_sdpa_attention

    calls = {}

    class Counted(KernelOps):
        def __getattr__(self, name):
            fn = super().__getattr__(name)

            def counted(*a, **k):
                calls[name] = calls.get(name, 0) + 1
                return fn(*a, **k)
            return counted

    g = torch.Generator().manual_seed(1)
    feed = {"latents": torch.randn(2, 48, 2, 4, 4, generator=g),
            "timestep": torch.tensor([999.0, 250.0]),
            "prompt_embeds": torch.randn(2, 256, 32, generator=g)}
    off = DiTExport(copy.deepcopy(tiny.transformer))
    use_sdpa_attention(off.transformer)
    ref = TorchRunner(off, *DIT_IO).run(feed)["noise_pred"]
    tr = copy.deepcopy(tiny.transformer)
    runner = TorchRunner(DiTExport(tr), *DIT_IO)
    use_sdpa_attention(tr)
    layers = len(tr.blocks)
    assert use_kernels(runner.module, Counted(reference=True)) == layers
    assert use_kernels(runner.module, Counted(reference=True)) == 0  # already patched
    # the fused processor keeps SDPA in half precision, as use_sdpa_attention set it
    assert all(isinstance(b.attn1.processor, FusedAttnProcessor) and b.attn1.processor.sdpa_always
               for b in tr.blocks)
    assert torch.equal(runner.run(feed)["noise_pred"], ref)
    assert calls == {"layernorm_modulate": 2 * layers, "rmsnorm_rope": 2 * layers,
                     "gated_residual": 2 * layers}

    z = torch.randn(1, 48, 2, 2, 2, generator=g)  # a first chunk and one step (caches)
    expect = decode_chunks(*vae_runners(tiny.vae), z)
    vae = copy.deepcopy(tiny.vae)
    patched = use_kernels(vae, Counted(reference=True))
    # every residual block of the decoder and its head; the encoder's are patched too
    assert patched >= 1 + sum(type(m).__name__ == "WanResidualBlock" for m in vae.decoder.modules())
    assert not any(isinstance(m, torch.nn.SiLU) for m in vae.decoder.modules())
    assert torch.equal(decode_chunks(*vae_runners(vae), z), expect)
    assert calls["rms_norm_silu"] > 0


def _profile(tmp_path, **component) -> Path:
    data = yaml.safe_load((ROOT / "profiles" / "cpu-tiny.yaml").read_text())
    for name, spec in component.items():
        data["components"][name].update(spec)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_profile_switch(tmp_path):
    assert load_profile(_profile(tmp_path)).data["components"]["dit"].get("kernels") is None
    ok = load_profile(_profile(tmp_path, dit={"runtime": "torch", "kernels": "triton"},
                               vae_decoder={"runtime": "torch", "kernels": "off"}))
    assert ok.data["components"]["dit"]["kernels"] == "triton"
    with pytest.raises(ProfileError, match=r"components.dit.kernels must be one of triton, off, "
                                           r"got 'cuda'"):
        load_profile(_profile(tmp_path, dit={"runtime": "torch", "kernels": "cuda"}))
    with pytest.raises(ProfileError, match=r"components.vae_decoder.kernels: triton applies to "
                                           r"runtime torch only, not 'tensorrt'"):
        load_profile(_profile(tmp_path, vae_decoder={"runtime": "tensorrt", "kernels": "triton"}))
    with pytest.raises(ProfileError, match=r"no fused kernels for text_encoder \(they exist "
                                           r"for dit, vae_decoder\)"):
        load_profile(_profile(tmp_path, text_encoder={"runtime": "torch", "kernels": "triton"}))


def test_runner_refusals(monkeypatch):
    with pytest.raises(ValueError, match=r"kernels must be one of triton, off, got 'on'"):
        CudaTorchRunner(torch.nn.Identity(), ["x"], ["y"], device="cpu", dtype="fp32",
                        kernels="on")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"kernels: triton needs a CUDA device \(or "
                                         r"TRITON_INTERPRET=1.*this runs on 'cpu'"):
        CudaTorchRunner(torch.nn.Identity(), ["x"], ["y"], device="cpu", dtype="fp32",
                        kernels="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    check_device("cpu")


def test_serving_passes_the_switch(tiny, monkeypatch):
    """stages._on_device patches the CPU runner's module when the profile says triton."""
    from t2vserve.export.wrappers import DiTExport
    from t2vserve.profile import Profile
    from t2vserve.runners import TorchRunner
    from t2vserve.serve import stages

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    data = {"components": {"dit": {"runtime": "torch", "kernels": "triton"}}}
    runner = TorchRunner(DiTExport(copy.deepcopy(tiny.transformer)), *DIT_IO)
    assert stages._on_device(Profile(data, Path("p.yaml")), "dit", runner) is runner
    assert all(getattr(b, "_t2v_kernels", False) for b in runner.module.transformer.blocks)
    off = TorchRunner(DiTExport(copy.deepcopy(tiny.transformer)), *DIT_IO)
    data["components"]["dit"]["kernels"] = "off"
    stages._on_device(Profile(data, Path("p.yaml")), "dit", off)
    assert not any(getattr(b, "_t2v_kernels", False) for b in off.module.transformer.blocks)


def test_bench_kernels_refuses_without_cuda(capsys):
    from t2vserve.cli import main

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["bench", "kernels", "--device", "cpu"]) == 2
    assert "bench kernels needs a CUDA device" in capsys.readouterr().err


def test_bench_kernels_interpreter_smoke(tmp_path):
    """`t2vserve bench kernels --device cpu --interpret` end to end: every kernel against its
    reference, the copy bandwidth, the DiT on and off; the result file's fields."""
    proc = subprocess.run([sys.executable, "-m", "t2vserve.cli", "bench", "kernels", "--device",
                           "cpu", "--interpret", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env=dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = tmp_path.glob("kernels-cpu-interpret-*.json")
    r = json.loads(path.read_text())
    assert (r["kind"], r["device"], r["interpret"], r["dtype"]) == \
        ("t2vserve.bench.kernels", "cpu", True, "float32")
    assert r["bandwidth"]["copy_gbs"] > 0 and r["bandwidth"]["datasheet_gbs"] is None
    assert {(k["kernel"], k["case"]) for k in r["kernels"]} == {
        ("layernorm_modulate", "tiny"), ("layernorm_modulate", "tiny per sample"),
        ("rmsnorm_rope", "tiny"), ("gated_residual", "tiny"), ("rms_norm_silu", "tiny")}
    for k in r["kernels"]:
        assert k["max_abs_err"] < 1e-5 and k["bytes"] > 0, k
        assert k["triton"]["gbs"] == pytest.approx(k["bytes"] / k["triton"]["median_ms"] / 1e6)
        copy_gbs = r["bandwidth"]["copy_gbs"]
        assert k["triton"]["of_copy"] == pytest.approx(k["triton"]["gbs"] / copy_gbs)
    [dit] = r["end_to_end"]["dit"]
    assert dit["max_rel_diff"] < 1e-5 and dit["speedup"] > 0
    assert r["targets"] == []  # no 720p rows, no VAE decode under the interpreter
    assert path.with_suffix(".md").read_text().startswith("# bench kernels on cpu (interpreter")


def test_bench_targets_take_each_kernels_largest_720p_case():
    from t2vserve.perf.bench_kernels import targets

    def row(kernel, case, nbytes, of_copy, resolution="720p"):
        return {"kernel": kernel, "case": case, "resolution": resolution, "bytes": nbytes,
                "triton": {"of_copy": of_copy}}
    r = {"kernels": [row("rms_norm_silu", "720p/mid+up0", 14, 0.1),
                     row("rms_norm_silu", "720p/up3+head", 923, 0.85),
                     row("gated_residual", "480p", 455, 0.9, "480p"),
                     row("gated_residual", "720p", 1676, 0.7)],
         "end_to_end": {"vae_decode": [{"width": 1280, "height": 704, "frames": 17,
                                        "speedup": 1.04}]}}
    assert [(t["target"], t["met"]) for t in targets(r)] == [
        ("rms_norm_silu 720p/up3+head >= 80% of copy bandwidth", True),
        ("gated_residual 720p >= 80% of copy bandwidth", False),
        ("VAE decode 1280x704x17 faster with kernels", True)]
