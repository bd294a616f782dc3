"""What `t2vserve export --format tensorrt` hands TensorRT, without TensorRT: the graphs the
builder parses (the FP32 export, whose attention TensorRT can fuse) and what `--compare`
feeds the plans (the smallest admitted request, the text encoder's embeddings of real
prompts). The build itself is tested in test_tensorrt.py, which needs TensorRT and a GPU."""

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from t2vserve.cli import _ensure_artifacts
from t2vserve.export.tensorrt_compare import COMPARE_PROMPTS, compare_feeds, compare_shapes
from t2vserve.export.tensorrt_engine import (
    ArtifactPaths,
    build_engines,
    build_input_dir,
    check_build_input,
    engine_specs,
    explicit_fp32_softmax,
)
from t2vserve.export.trt_profiles import GRAPHS, optimisation_profiles
from t2vserve.pipeline import tokenize
from t2vserve.profile import Profile, load_profile
from t2vserve.runners.tensorrt import fits
from t2vserve.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # the session's FP32 and FP16 tiny exports


def _profile(artifacts) -> Profile:
    base = load_profile(ROOT / "profiles" / "cpu-tiny.yaml")
    data = copy.deepcopy(base.data)
    data["model"]["artifacts"] = str(artifacts)
    return Profile(data, base.path)


def _softmax_count(path) -> int:
    return sum(n.op_type == "Softmax" for n in onnx.load(str(path)).graph.node)


def test_the_fp16_export_writes_attention_as_an_fp32_softmax_island(fp16_artifacts):
    # the pattern the check looks for is really there in the FP16 DiT: every attention of
    # every block (self and cross) is MatMul -> Cast(FP32) -> Softmax -> Cast -> MatMul
    islands = explicit_fp32_softmax(fp16_artifacts / "dit.onnx")
    assert islands and len(islands) == _softmax_count(fp16_artifacts / "dit.onnx")
    with pytest.raises(ValueError, match="reduced-precision export"):
        check_build_input(fp16_artifacts)


def test_the_builder_is_handed_the_fp32_graphs_with_fusable_attention(
        tiny_artifacts, fp16_artifacts, tmp_path):
    # served artifacts in FP16 (as the H100 profiles export them): the build input is the
    # FP32 export of the same weights beside the plans, never the FP16 graphs
    served = tmp_path / "served"
    shutil.copytree(fp16_artifacts, served)
    profile = _profile(served)
    build_input = build_input_dir(served)
    assert build_input == served / "tensorrt" / "onnx-fp32"
    shutil.copytree(tiny_artifacts, build_input)  # what the FP32 export writes there
    _ensure_artifacts(profile, tensorrt=True)  # same weight hash: kept, no export
    paths = ArtifactPaths.for_profile(profile)
    assert paths.onnx_dir == build_input and paths.plans_dir == served / "tensorrt"
    manifest = check_build_input(paths.onnx_dir)
    assert set(manifest["precision"].values()) == {"float32"}
    for graph in GRAPHS:
        assert explicit_fp32_softmax(paths.onnx(graph)) == [], graph
    assert _softmax_count(paths.onnx("dit")) > 0  # the attention is there, unpinned
    # an FP32 served export is parsed as it is
    assert build_input_dir(tiny_artifacts) == tiny_artifacts
    # and the builder refuses the FP16 graphs before it ever needs TensorRT
    with pytest.raises(ValueError, match="builds from the FP32 export"):
        build_engines(profile, served, tmp_path / "plans")


def test_compare_runs_the_smallest_admitted_request_not_the_opt_shape():
    profile = load_profile(ROOT / "profiles" / "h100-720p.yaml")
    shapes = compare_shapes(profile)
    spans = optimisation_profiles(profile)

    def tokens(latents):  # DiT patch 1x2x2
        return latents[2] * (latents[3] // 2) * (latents[4] // 2)

    opt_tokens = tokens(spans["dit"]["latents"][1])
    assert shapes["dit"]["latents"][0] == 2  # a CFG pair
    assert tokens(shapes["dit"]["latents"]) * 4 < opt_tokens, (shapes["dit"], opt_tokens)
    specs = {s.graph: s for s in engine_specs(profile, None, ArtifactPaths.for_profile(profile))}
    for graph, inputs in shapes.items():  # inside one of the plan's per-size profiles
        assert any(fits(p, inputs) for p in specs[graph].profiles), (graph, inputs)


def test_compare_feeds_the_dit_the_text_encoders_embeddings_of_real_prompts(tiny_artifacts):
    profile = _profile(tiny_artifacts)
    manifest = json.loads((tiny_artifacts / "manifest.json").read_text())
    shapes = compare_shapes(profile, manifest)
    feeds = compare_feeds(tiny_artifacts, shapes)
    for graph, inputs in shapes.items():
        assert {n: tuple(v.shape) for n, v in feeds[graph].items()} == inputs, graph

    # the text encoder gets the prompts as the server tokenises them
    batch, text_len = shapes["text_encoder"]["input_ids"]
    tokens = tokenize(load_tokenizer(tiny_artifacts / "tokenizer"),
                      [COMPARE_PROMPTS[i % 2] for i in range(batch)], text_len)
    np.testing.assert_array_equal(feeds["text_encoder"]["input_ids"], tokens["input_ids"])
    assert feeds["text_encoder"]["attention_mask"].sum(1).min() > 3  # real prompts, not empty

    # the DiT gets that graph's embeddings of them, not N(0,1)
    encoder = ort.InferenceSession(str(tiny_artifacts / "text_encoder.onnx"),
                                   providers=["CPUExecutionProvider"])
    expected = encoder.run(["prompt_embeds"], tokens)[0]
    embeds = feeds["dit"]["prompt_embeds"]
    np.testing.assert_allclose(embeds, expected, rtol=1e-6, atol=1e-7)
    lengths = tokens["attention_mask"].sum(1)
    assert (embeds[0, lengths[0]:] == 0).all() and not np.allclose(embeds[0], embeds[1])

    # the VAE step graph gets the caches the first-frame graph returned
    first = ort.InferenceSession(str(tiny_artifacts / "vae_decode_first.onnx"),
                                 providers=["CPUExecutionProvider"])
    outs = dict(zip([o.name for o in first.get_outputs()],
                    first.run(None, feeds["vae_decode_first"])))
    for name, value in feeds["vae_decode_step"].items():
        if name != "latents":
            np.testing.assert_array_equal(value, outs[f"{name}_out"])
