"""TensorRT optimisation profiles, engine specs and native Triton configs: no TensorRT needed.

The property that matters: every size request validation accepts lies inside every engine
profile, and a size just outside the limits is refused by validation (so TensorRT never sees
it). Profiles are derived from the project's own profile files and the real preset configs.
"""

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from t2vserve.export.tensorrt_compare import compare_runners
from t2vserve.export.tensorrt_engine import ArtifactPaths, check_specs_cover, engine_specs
from t2vserve.export.trt_profiles import (
    GRAPHS,
    evaluate,
    optimisation_profiles,
    preset_graphs,
    request_shapes,
)
from t2vserve.runners.tensorrt import fits, select_profile
from t2vserve.presets import get_preset
from t2vserve.profile import Profile, load_profile

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("h100-480p", "h100-720p", "cpu-tiny")


def _profile(name: str) -> Profile:
    return load_profile(ROOT / "profiles" / f"{name}.yaml")


def _edited(profile: Profile, edit) -> Profile:
    data = copy.deepcopy(profile.data)
    edit(data)
    return Profile(data, profile.path)


def _manifest(preset_name: str) -> dict:
    """The manifest fields the TensorRT path reads, as `t2vserve export` writes them."""
    preset = get_preset(preset_name)
    return {"preset": preset.name, "text_len": preset.text_len,
            "latent_channels": preset.latent_channels, "precision": {},
            "graphs": preset_graphs(preset)}


@pytest.fixture(scope="module")
def profiles():
    return {n: (_profile(n), optimisation_profiles(_profile(n))) for n in NAMES}


def test_720p_shapes_come_from_limits_defaults_and_batch_sizes(profiles):
    profile, shapes = profiles["h100-720p"]
    lo, opt, hi = shapes["dit"]["latents"]
    # 704..1280 px -> 44..80 latent on both axes; 17..121 frames -> 5..31 latent frames;
    # opt is the default 1280x704x121 with CFG (batch 2); max batch is models.dit.max_batch_size
    assert lo == (1, 48, 5, 44, 44)
    assert opt == (2, 48, 31, 44, 80)
    assert hi == (profile.model("dit")["max_batch_size"], 48, 31, 80, 80) == (2, 48, 31, 80, 80)
    assert shapes["dit"]["timestep"] == ((1,), (2,), (2,))
    assert shapes["dit"]["prompt_embeds"] == ((1, 512, 4096), (2, 512, 4096), (2, 512, 4096))
    # text encoder: prompt + negative per request, text length fixed at the preset's 512
    assert shapes["text_encoder"]["input_ids"] == ((1, 512), (2, 512), (8, 512))
    assert shapes["text_encoder"]["attention_mask"] == shapes["text_encoder"]["input_ids"]
    assert shapes["vae_decode_first"]["latents"] == (
        (1, 48, 1, 44, 44), (1, 48, 1, 44, 80), (1, 48, 1, 80, 80))
    assert set(shapes["vae_decode_first"]) == {"latents"}


def test_480p_batch_and_size_ranges(profiles):
    _, shapes = profiles["h100-480p"]
    assert shapes["dit"]["latents"] == (
        (1, 48, 5, 30, 30), (2, 48, 19, 30, 52), (4, 48, 19, 52, 52))
    assert shapes["text_encoder"]["input_ids"][2] == (8, 512)


def test_vae_caches_are_the_exporters_expressions_evaluated(profiles):
    _, shapes = profiles["h100-720p"]
    step = shapes["vae_decode_step"]
    caches = [n for n in step if n.startswith("cache_")]
    assert len(caches) == 32  # the 5B decoder's causal-conv caches
    assert step["cache_0"] == ((1, 48, 2, 44, 44), (1, 48, 2, 44, 80), (1, 48, 2, 80, 80))
    # the last caches sit after three x2 upsamplings
    assert step["cache_31"] == ((1, 256, 2, 352, 352), (1, 256, 2, 352, 640), (1, 256, 2, 640, 640))


def test_caches_of_a_hand_written_manifest_are_substituted():
    profile = _profile("cpu-tiny")
    manifest = _manifest("tiny")
    latents = {"name": "latents", "dtype": "FP32",
               "shape": ["batch", 48, 1, "latent_height", "latent_width"]}
    cache = {"name": "cache_0", "dtype": "FP32",
             "shape": ["batch", 16, 2, "8*latent_height", "8*latent_width"]}
    manifest["graphs"]["vae_decode_step"]["inputs"] = [latents, cache]
    shapes = optimisation_profiles(profile, manifest)["vae_decode_step"]
    # cpu-tiny: 64..832 px, default 128 -> latent 4..52, opt 8
    assert shapes["cache_0"] == ((1, 16, 2, 32, 32), (1, 16, 2, 64, 64), (1, 16, 2, 416, 416))
    text = optimisation_profiles(profile)["text_encoder"]["input_ids"]
    assert text == ((1, 256), (2, 256), (16, 256))


@pytest.mark.slow
def test_profiles_from_a_real_export_match_the_preset(tiny_artifacts):
    profile = _profile("cpu-tiny")
    manifest = json.loads((tiny_artifacts / "manifest.json").read_text())
    assert optimisation_profiles(profile, manifest) == optimisation_profiles(profile)


# Every admitted size and every refused neighbour, against validation, the engine
# profiles and the shared-memory sizing: tests/unit/test_profile_sizes.py


def test_inconsistent_profiles_are_refused():
    profile = _profile("h100-480p")
    bad_default = _edited(profile, lambda d: d["defaults"].update(width=1280))
    with pytest.raises(ValueError, match=r"defaults.width 1280 is not a size the limits allow: "
                                         r"width must be a multiple of 32 in \[480, 832\]"):
        optimisation_profiles(bad_default)
    square = _edited(profile, lambda d: d["defaults"].update(width=832, height=832))
    with pytest.raises(ValueError, match=r"defaults 832x832 is not a size the limits allow: "
                                         r"height must be 480 for width 832"):
        optimisation_profiles(square)
    too_long = _edited(profile, lambda d: d["limits"].update(prompt_tokens=600))
    with pytest.raises(ValueError,
                       match="limits.prompt_tokens 600 exceeds the text encoder's length 512"):
        optimisation_profiles(too_long)
    odd = _edited(profile, lambda d: d["limits"]["width"].update(multiple=16))
    with pytest.raises(ValueError, match=r"multiple 16 must be a multiple of 32 "
                                         r"\(VAE stride 16 x DiT patch 2\)"):
        optimisation_profiles(odd)
    odd_height = _edited(profile, lambda d: d["limits"]["height"].update(multiple=16))
    with pytest.raises(ValueError, match=r"limits.height.multiple 16 must be a multiple of 32"):
        optimisation_profiles(odd_height)
    with pytest.raises(ValueError,
                       match="the export is of preset 'tiny', profile h100-480p serves"):
        optimisation_profiles(profile, _manifest("tiny"))


def test_dimension_expressions():
    assert evaluate("4*latent_height", {"latent_height": 44}) == 176
    assert evaluate(48, {}) == 48
    with pytest.raises(ValueError, match="uses symbol 's0'; known symbols: batch"):
        evaluate("2*s0", {"batch": 1})


def test_engine_specs_take_precision_from_the_profile(tmp_path):
    profile = _profile("h100-480p")
    paths = ArtifactPaths.of(tmp_path / "onnx", tmp_path / "plans")
    manifest = _manifest(profile.data["model"]["preset"])
    specs = {s.graph: s for s in engine_specs(profile, manifest, paths)}
    assert list(specs) == list(GRAPHS)
    assert specs["text_encoder"].precision == "bf16" and specs["dit"].precision == "fp16"
    assert specs["vae_decode_step"].precision == "fp16"
    assert specs["dit"].fp32_inputs == ("timestep",) and not specs["dit"].fp32_softmax
    assert specs["dit"].plan_path == tmp_path / "plans" / "dit.plan"
    assert specs["dit"].shapes["latents"][2] == (4, 48, 19, 52, 52)
    fp16_text = _edited(profile, lambda d: d["components"]["text_encoder"].update(precision="fp16"))
    with pytest.raises(ValueError, match=r"components.text_encoder.precision 'fp16' is not "
                                         r"supported by the TensorRT build; choose one of "
                                         r"bf16, fp32"):
        engine_specs(fp16_text, _manifest("wan2.2-ti2v-5b"), paths)


@pytest.mark.parametrize("name, sizes", [("h100-480p", [(832, 480), (480, 832)]),
                                         ("h100-720p", [(1280, 704), (704, 1280)])])
def test_one_optimisation_profile_per_served_size(tmp_path, name, sizes):
    """Each listed size gets its own profile (spatial min = max), so no engine holds memory
    for the box between them; the text encoder's profiles do not depend on the size and are
    merged. At run time each admitted size selects its own profile, and a size the ranges
    alone would admit (the old 1280x1280 corner, a neighbour 32 px off) fits none."""
    profile = _profile(name)
    paths = ArtifactPaths.of(tmp_path / "onnx", tmp_path / "plans")
    manifest = _manifest(profile.data["model"]["preset"])
    specs = {s.graph: s for s in engine_specs(profile, manifest, paths)}
    assert len(specs["text_encoder"].profiles) == 1
    for graph in ("dit", "vae_decode_first", "vae_decode_step"):
        assert len(specs[graph].profiles) == len(sizes), graph
    check_specs_cover(profile, list(specs.values()), manifest)
    lo_f, hi_f = profile.limits.num_frames
    frames = [f for f in range(lo_f, hi_f + 1) if (f - 1) % 4 == 0]
    for index, (w, h) in enumerate(sizes):
        latents = specs["dit"].profiles[index]["latents"]
        assert latents[0][3:] == latents[2][3:] == (h // 16, w // 16)  # exactly this size
        for f in (frames[0], frames[-1]):
            for graph, shapes in request_shapes(profile, w, h, f, manifest).items():
                assert select_profile(list(specs[graph].profiles), shapes) == \
                    (0 if graph == "text_encoder" else index), (graph, w, h, f)
    w, h = sizes[0]
    for refused in [(max(w, h), max(w, h)), (w + 32, h), (w, h - 32), (h + 32, w)]:
        for graph in ("dit", "vae_decode_step"):
            shapes = request_shapes(profile, *refused, frames[0], manifest)[graph]
            assert not any(fits(p, shapes) for p in specs[graph].profiles), (graph, refused)
            with pytest.raises(ValueError, match="outside every engine profile"):
                select_profile(list(specs[graph].profiles), shapes)
    # a profile without limits.sizes keeps one profile spanning its ranges
    ranged = _edited(profile, lambda d: d["limits"].pop("sizes"))
    assert all(len(s.profiles) == 1 for s in engine_specs(ranged, manifest, paths))


def _onnx_scale(path: Path, scale: float) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["y"]), helper.make_node("Softmax", ["y"], ["p"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [scale])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, str(path))
    return path


def test_comparison_through_polygraphy_runs_on_onnxruntime(tmp_path):
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    def runner(scale):
        return OnnxrtRunner(SessionFromOnnx(str(_onnx_scale(tmp_path / f"{scale}.onnx", scale))))

    feed = {"x": np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)}
    same = compare_runners([runner(1.0), runner(1.0)], feed, rtol=1e-6, atol=1e-6)
    assert same.passed and same.max_abs == {"p": 0.0}
    off = compare_runners([runner(1.0), runner(1.5)], feed, rtol=1e-3, atol=1e-3)
    assert not off.passed and off.max_abs["p"] > 1e-3
