"""Model variants and their sampling (t2vserve/sampling.py) through the one denoising loop:
few-step mode, the guidance interval and the step cache, on the tiny model in process."""

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from t2vserve.pipeline import Pipeline, denoise_loop, initial_noise, latent_shape
from t2vserve.profile import Profile, load_profile
from t2vserve.sampling import CacheCurve, Sampling, StepCache, variants_of
from t2vserve.schema import RequestValidationError
from t2vserve.serve import stages

ROOT = Path(__file__).resolve().parents[2]
FEW = {"mode": "few_step", "steps": 4, "sigmas": [1.0, 0.75, 0.5, 0.25, 0.0],
       "guidance_scale": 1.0}


def _profile(variants: dict | None, artifacts=None) -> Profile:
    base = load_profile(ROOT / "profiles" / "cpu-tiny.yaml")
    data = copy.deepcopy(base.data)
    if variants is not None:
        data["variants"] = variants
    if artifacts is not None:
        data["model"]["artifacts"] = str(artifacts)
    return Profile(data, base.path)


@pytest.fixture(scope="module")
def pipe(tiny):
    return Pipeline.from_components(tiny)


def _run(pipe, sampling, steps=8, guidance=5.0, seed=7, prompt="a red cup on a white background"):
    embeds = pipe.encode([prompt, "blurry"])
    if guidance <= 1.0:
        embeds = embeds[:1]
    shape = latent_shape(pipe.preset, 64, 64, 5)
    stats = {}
    out = denoise_loop(pipe.dit, initial_noise(shape, seed), embeds, steps, guidance,
                       scheduler="unipc", shift=pipe.preset.flow_shift, sampling=sampling,
                       stats=stats)
    return out, stats


def test_no_variants_means_one_base_variant():
    (variant,) = variants_of(_profile(None)).values()
    assert variant.name == "base" and variant.dit_model == "dit" and variant.sampling == Sampling()


def test_variants_parse_and_refuse_what_they_cannot_do(tmp_path):
    sampling_file = tmp_path / "sampling.json"
    sampling_file.write_text(json.dumps(FEW))
    v = variants_of(_profile({"base": {}, "fast": {"cache": {"threshold": 0.1, "max_skips": 2}},
                              "half": {"guidance_interval": [0.0, 0.5]},
                              "student": {"lora": ["x.safetensors:0.5"],
                                          "sampling": str(sampling_file)}}))
    assert list(v) == ["base", "fast", "half", "student"]
    assert v["fast"].dit_model == v["half"].dit_model == "dit"  # same weights, same batches
    assert v["student"].dit_model == "dit_student" and v["student"].sampling.steps == 4
    for bad, match in [({"mode": "turbo"}, "mode must be one of base, few_step"),
                       ({**FEW, "sigmas": [1.0, 0.5, 0.75, 0.25, 0.0]}, "decreasing"),
                       ({**FEW, "sigmas": [1.0, 0.75, 0.5, 0.25]}, "final 0.0")]:
        with pytest.raises(ValueError, match=match):
            variants_of(_profile({"x": {"sampling": bad}}))
    with pytest.raises(ValueError, match="guidance_interval must be"):
        variants_of(_profile({"x": {"guidance_interval": [0.5, 0.5]}}))
    with pytest.raises(ValueError, match="threshold > 0 and max_skips >= 1"):
        variants_of(_profile({"x": {"cache": {"threshold": 0}}}))
    with pytest.raises(ValueError, match="base mode only"):
        variants_of(_profile({"x": {"sampling": FEW, "cache": {"threshold": 0.1}}}))


def test_a_few_step_variant_fixes_steps_and_guidance_and_names_them():
    profile = _profile({"base": {}, "student": {"sampling": FEW}})
    variants = variants_of(profile)
    prompt = np.array([b"a red cup"], dtype=object)
    values = {"prompt": prompt, "model_variant": np.array([b"student"], dtype=object)}
    picked = stages.pick_variant(values, {k: (v, "id") for k, v in variants.items()})
    req = stages.parse_request(values, profile, variant=picked[0])
    assert (req.steps, req.guidance_scale) == (4, 1.0)  # not the profile's 8 and 5.0
    with pytest.raises(RequestValidationError,
                       match=r"model_variant 'student' samples few-step: exactly 4 steps at "
                             r"guidance_scale 1 \(no CFG\); got steps=8, guidance_scale=5"):
        stages.parse_request({**values, "steps": np.array([8]), "guidance_scale": np.array([5.0])},
                             profile, variant=variants["student"])
    mapped = replace(variants["student"], sampling=replace(variants["student"].sampling,
                                                           map_request=True))
    assert stages.parse_request({**values, "steps": np.array([8])}, profile,
                                variant=mapped).steps == 4
    with pytest.raises(RequestValidationError, match="model_variant must be one of base, student"):
        stages.pick_variant({"model_variant": np.array([b"turbo"], dtype=object)}, variants)
    # the base variant leaves the request as it is
    assert stages.parse_request({"prompt": prompt, "steps": np.array([3])}, profile,
                                variant=variants["base"]).steps == 3


def test_few_step_mode_steps_over_its_sigmas_with_one_pass_each(pipe):
    sampling = variants_of(_profile({"s": {"sampling": FEW}}))["s"].sampling
    _, stats = _run(pipe, sampling, steps=4, guidance=1.0)
    assert stats["timesteps"] == [1000.0, 750.0, 500.0, 250.0]
    assert stats["dit_calls"] == 4 and stats["dit_forwards"] == 4  # no unconditional pass


def test_the_guidance_interval_skips_the_unconditional_pass_outside_it(pipe):
    base, base_stats = _run(pipe, Sampling())
    half, stats = _run(pipe, Sampling(guidance_interval=(0.0, 0.5)))
    assert base_stats["dit_forwards"] == 16 and stats["dit_forwards"] == 12  # 4x2 + 4x1
    assert stats["dit_calls"] == 8
    assert not torch.equal(base, half)
    # an interval over every step is the base loop, bit for bit
    full, _ = _run(pipe, Sampling(guidance_interval=(0.0, 1.0)))
    assert torch.equal(base, full)


def _curve(pipe, steps=8):
    """A calibration curve measured here, as calibrate-cache does (one prompt)."""
    norms = {}
    embeds = pipe.encode(["a green box", "blurry"])
    denoise_loop(pipe.dit, initial_noise(latent_shape(pipe.preset, 64, 64, 5), 1), embeds,
                 steps, 5.0, shift=pipe.preset.flow_shift,
                 on_prediction=lambda i, t, p: norms.__setitem__(t, float(torch.log(p.norm()))))
    ts = sorted(norms)
    return CacheCurve(tuple(ts), tuple(norms[t] for t in ts), "hash")


def test_the_step_cache_skips_within_its_threshold_and_never_first_or_last(pipe):
    curve = _curve(pipe)
    base, _ = _run(pipe, Sampling())
    off, off_stats = _run(pipe, Sampling(cache=StepCache(1e-9, 2, curve)))
    assert torch.equal(off, base) and off_stats["cached_steps"] == []  # nothing under 1e-9
    wide, stats = _run(pipe, Sampling(cache=StepCache(10.0, 2, curve)))
    # always computed: step 0 and the last; at most 2 reuses in a row
    assert stats["cached_steps"] == [1, 2, 4, 5]
    assert stats["dit_calls"] == 4 and stats["dit_forwards"] == 8
    assert not torch.equal(wide, base)
    # per request: a second run starts from a fresh state and repeats itself exactly
    again, again_stats = _run(pipe, Sampling(cache=StepCache(10.0, 2, curve)))
    assert torch.equal(again, wide) and again_stats == stats


def test_a_calibration_for_other_weights_is_refused(tmp_path):
    path = tmp_path / "cache_calibration.json"
    path.write_text(json.dumps({"weight_hash": "a" * 64, "timesteps": [1.0, 999.0],
                                "log_norm": [0.0, 1.0]}))
    assert CacheCurve.load(path, "a" * 64).ratio(999.0, 1.0) == pytest.approx(np.exp(-1.0))
    with pytest.raises(ValueError, match="was calibrated for weights 'aaaa.* not these "
                                         r"\(bbbbbbbbbbbb\.\.\.\): run `t2vserve calibrate-cache`"):
        CacheCurve.load(path, "b" * 64)
    with pytest.raises(FileNotFoundError, match="run `t2vserve calibrate-cache`"):
        CacheCurve.load(tmp_path / "missing.json", "a" * 64)
