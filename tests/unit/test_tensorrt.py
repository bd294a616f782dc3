"""TensorRT engines of the tiny preset against ONNX Runtime (through polygraphy).

Builds the four engines from the session's tiny ONNX export with the reduced precisions the
H100 profiles use (text encoder BF16, DiT and VAE FP16, FP32 pins), then compares each with
ONNX Runtime at a size other than the profile's opt. Needs the TensorRT libraries and a CUDA
device; everywhere else the module is skipped with the reason.
"""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from t2vserve.export.specs import DIT, TEXT_ENCODER
from t2vserve.export.tensorrt_compare import TOLERANCES, compare_with_onnxruntime
from t2vserve.export.tensorrt_engine import build_engines
from t2vserve.runners.tensorrt import Engine, TensorRTRunner
from t2vserve.export.trt_profiles import COMPONENT, GRAPHS, optimisation_profiles
from t2vserve.export.vae_chunked import cache_shapes
from t2vserve.pipeline import decode_chunks, vae_runners
from t2vserve.profile import Profile, load_profile
from t2vserve.runners import OnnxRuntimeRunner

trt = pytest.importorskip(
    "tensorrt",
    reason="TensorRT libraries are not installed (pip's tensorrt is a stub that downloads from "
           "NVIDIA's index; none of our machines has them)")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device: TensorRT engines are built and run on one",
                allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture(scope="module")
def profile(tiny_artifacts):
    base = load_profile(ROOT / "profiles" / "cpu-tiny.yaml")
    data = copy.deepcopy(base.data)
    data["model"]["artifacts"] = str(tiny_artifacts)
    data["components"] = {"text_encoder": {"runtime": "tensorrt", "precision": "bf16"},
                          "dit": {"runtime": "tensorrt", "precision": "fp16"},
                          "vae_decoder": {"runtime": "tensorrt", "precision": "fp16"}}
    return Profile(data, base.path)


@pytest.fixture(scope="module")
def built(profile, tiny_artifacts, tmp_path_factory):
    plans = tmp_path_factory.mktemp("plans")
    return plans, build_engines(profile, tiny_artifacts, plans, workspace_gb=4)


def _feed(graph: str, tiny) -> dict[str, np.ndarray]:
    """Inputs inside the engine profiles but away from their opt shapes."""
    preset = tiny.preset
    if graph == "text_encoder":
        ids, mask = TEXT_ENCODER.sample(preset, batch=3, text_len=preset.text_len)
        return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    if graph == "dit":
        latents, timestep, embeds = DIT.sample(preset, batch=3, text_len=preset.text_len,
                                               frames=3, height=6, width=10)
        return {"latents": latents.numpy(), "timestep": timestep.numpy(),
                "prompt_embeds": embeds.numpy()}
    g = torch.Generator().manual_seed(1)
    feed = {"latents": torch.randn(1, 48, 1, 6, 10, generator=g).numpy()}
    if graph == "vae_decode_step":
        for i, shape in enumerate(cache_shapes(tiny.vae, 1, 6, 10)):
            feed[f"cache_{i}"] = (0.5 * torch.randn(shape, generator=g)).numpy()
    return feed


def test_build_writes_one_plan_per_graph_and_engines_json(built, profile, tiny_artifacts):
    plans, result = built
    assert result["tensorrt"] == trt.__version__
    shapes = optimisation_profiles(profile, None)
    for graph in GRAPHS:
        info = result["graphs"][graph]
        assert (plans / info["plan"]).exists()
        assert info["shapes"] == {n: [list(s) for s in trio] for n, trio in shapes[graph].items()}
        assert info["fp32_layers"] > 0, graph  # norms and reductions pinned in every graph
    assert (plans / "engines.json").exists() and (plans / "timing.cache").exists()


@pytest.mark.parametrize("graph", GRAPHS)
def test_engine_matches_onnxruntime(graph, built, tiny, tiny_artifacts):
    plans, result = built
    rtol, atol = TOLERANCES[(COMPONENT[graph], result["graphs"][graph]["precision"])]
    out = compare_with_onnxruntime(tiny_artifacts / f"{graph}.onnx", plans / f"{graph}.plan",
                                   _feed(graph, tiny), rtol=rtol, atol=atol)
    assert out.passed, f"{graph}: max abs {out.max_abs}, max rel {out.max_rel}"


def test_runner_interface_matches_the_onnx_runner(built, tiny, tiny_artifacts):
    plans, _ = built
    feed = _feed("dit", tiny)
    trt_runner = TensorRTRunner(plans / "dit.plan", list(DIT.inputs), list(DIT.outputs))
    ort_runner = OnnxRuntimeRunner(tiny_artifacts / "dit.onnx")
    assert trt_runner.input_names == ort_runner.input_names
    got = trt_runner.run(feed)["noise_pred"]
    assert got.is_cuda  # device tensors out; the host copy is the caller's
    got, want = got.cpu().numpy(), ort_runner.run(feed)["noise_pred"].numpy()
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, *TOLERANCES[("dit", "fp16")])


def test_a_shape_outside_the_profile_is_refused(built, tiny):
    plans, _ = built
    engine = Engine(plans / "dit.plan").load()
    feed = {k: torch.from_numpy(v) for k, v in _feed("dit", tiny).items()}
    feed["latents"] = torch.zeros(1, 48, 3, 6, 54)  # 54 > 52 = 832 px / 16
    feed["timestep"], feed["prompt_embeds"] = feed["timestep"][:1], feed["prompt_embeds"][:1]
    with pytest.raises(ValueError, match="outside the engine profile"):
        engine.infer(feed)


def test_vae_engines_decode_with_caches_on_the_gpu(built, tiny):
    plans, _ = built
    first = TensorRTRunner(plans / "vae_decode_first.plan")
    step = TensorRTRunner(plans / "vae_decode_step.plan")
    z = torch.randn(1, 48, 3, 6, 10, generator=torch.Generator().manual_seed(2))
    frames = decode_chunks(first, step, z.cuda())  # the served loop
    assert frames.is_cuda and frames.shape == (1, 3, 9, 96, 160)
    want = decode_chunks(*vae_runners(tiny.vae), z)
    rtol, atol = TOLERANCES[("vae_decoder", "fp16")]
    np.testing.assert_allclose(frames.float().cpu().numpy(), want.numpy(), rtol=rtol, atol=atol)
