"""LoRA fusion at export (export/lora.py): the fused weights, wrong keys, repeat fusions, and the
exported model against diffusers' own WanPipeline with the same LoRA fused."""

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from t2vserve.export.lora import LoraSpec, fuse_loras, fused_loras, parse_lora_arg

from .test_pipeline import wan_pipeline_frames

RANK = 4
# diffusers' module name -> the original Wan name (self-attention, cross-attention, FFN: the
# converter treats the three differently, and rescaled the last two in place)
WAN_NAMES = {"attn1.to_q": "self_attn.q", "attn1.to_out.0": "self_attn.o",
             "attn2.to_k": "cross_attn.k", "attn2.to_out.0": "cross_attn.o",
             "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2"}
MODULES = [f"blocks.{b}.{m}" for b in (0, 2) for m in WAN_NAMES]


def _factors(dit, modules, seed, alphas=None):
    """module -> (A, B, alpha) of random LoRA factors that fit the model."""
    g = torch.Generator().manual_seed(seed)
    linear = dict(dit.named_modules())
    out = {}
    for i, m in enumerate(modules):
        lin = linear[m]
        a = torch.randn(RANK, lin.in_features, generator=g) / lin.in_features ** 0.5
        b = torch.randn(lin.out_features, RANK, generator=g) * 0.3
        out[m] = (a, b, None if alphas is None else alphas[i % len(alphas)])
    return out


def _save_diffusers(path, factors):
    sd = {}
    for m, (a, b, alpha) in factors.items():
        sd[f"transformer.{m}.lora_A.weight"] = a.contiguous()
        sd[f"transformer.{m}.lora_B.weight"] = b.contiguous()
        if alpha is not None:
            sd[f"transformer.{m}.alpha"] = torch.tensor(float(alpha))
    save_file(sd, str(path))
    return path


def _save_diffusers_metadata(path, factors):
    """As WanPipeline.save_lora_weights writes it: alpha in the safetensors header (one alpha
    for all modules here)."""
    from diffusers import WanPipeline

    [alpha] = {alpha for _, _, alpha in factors.values()}
    layers = {f"{m}.lora_{k}.weight": w.contiguous()
              for m, (a, b, _) in factors.items() for k, w in (("A", a), ("B", b))}
    WanPipeline.save_lora_weights(path.parent, transformer_lora_layers=layers,
                                  weight_name=path.name, transformer_lora_adapter_metadata={
                                      "r": RANK, "lora_alpha": alpha,
                                      "target_modules": sorted(factors)})
    return path


def _save_wan(path, factors):
    sd = {}
    for m, (a, b, alpha) in factors.items():
        _, block, rest = m.split(".", 2)
        name = f"diffusion_model.blocks.{block}.{WAN_NAMES[rest]}"
        sd[f"{name}.lora_down.weight"] = a.contiguous()
        sd[f"{name}.lora_up.weight"] = b.contiguous()
        if alpha is not None:
            sd[f"{name}.alpha"] = torch.tensor(float(alpha))
    save_file(sd, str(path))
    return path


def _expected(dit, factors, scale):
    """The fused weights of the modules the LoRA targets: W + scale * alpha / rank * B @ A."""
    weights = dict(dit.named_parameters())
    return {f"{m}.weight": weights[f"{m}.weight"].detach()
            + scale * ((alpha or RANK) / RANK) * (b @ a) for m, (a, b, alpha) in factors.items()}


def _assert_fused(dit, original, expected):
    params = dict(dit.named_parameters())
    # a plain module again: the same parameters, no adapter layers
    assert params.keys() == dict(original.named_parameters()).keys()
    for name, before in original.named_parameters():
        if name in expected:
            torch.testing.assert_close(params[name].detach(), expected[name], rtol=1e-5,
                                       atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
        else:
            assert torch.equal(params[name], before), name


@pytest.fixture
def dit(tiny):
    return copy.deepcopy(tiny.transformer)  # the session's tiny components stay untouched


@pytest.mark.parametrize("layout, save, alphas", [
    ("diffusers", _save_diffusers, None),        # no alpha: scale 1 per module (alpha = rank)
    ("diffusers", _save_diffusers, [8.0, 2.0]),  # .alpha keys, two values
    ("diffusers", _save_diffusers_metadata, [2.0]),  # alpha in diffusers' metadata
    ("wan", _save_wan, None),
    ("wan", _save_wan, [8.0, 1.0, 4.0]),         # lightx2v-style alphas
])
def test_fused_weights_are_w_plus_scaled_b_a(tiny, dit, tmp_path, layout, save, alphas):
    factors = _factors(dit, MODULES, seed=1, alphas=alphas)
    path = save(tmp_path / f"{layout}.safetensors", factors)
    expected = _expected(dit, factors, scale=0.7)
    records = fuse_loras(dit, [LoraSpec(path, 0.7)])
    _assert_fused(dit, tiny.transformer, expected)
    from peft.tuners.tuners_utils import BaseTunerLayer
    assert not any(isinstance(m, BaseTunerLayer) for m in dit.modules())
    assert not hasattr(dit, "peft_config")
    rec = records[0]
    assert (rec["file"], rec["scale"], rec["layout"], rec["layers"]) == (
        path.name, 0.7, layout, len(MODULES))
    assert len(rec["sha256"]) == 64 and fused_loras(dit) == records


def test_the_distilled_student_layout_loads_at_scale_one(tiny, dit, tmp_path):
    # what the distillation ships: PEFT keys, rank r, alpha = r, saved with safetensors
    modules = [n for n, m in dit.named_modules()
               if isinstance(m, torch.nn.Linear) and n.startswith("blocks.")]
    factors = _factors(dit, modules, seed=2, alphas=[float(RANK)])
    path = _save_diffusers(tmp_path / "student.safetensors", factors)
    expected = _expected(dit, factors, scale=1.0)
    assert fuse_loras(dit, [parse_lora_arg(str(path))])[0]["layers"] == len(modules) == 30
    _assert_fused(dit, tiny.transformer, expected)


def test_a_file_fused_twice_gives_the_same_weights_no_in_place_double_scaling(tiny, tmp_path):
    # diffusers' Wan converter rescales the dict it converts in place (cross-attention, FFN):
    # a second fusion of the same dict would scale those layers twice.
    dits = [copy.deepcopy(tiny.transformer) for _ in range(3)]
    factors = _factors(dits[0], MODULES, seed=3, alphas=[8.0])
    spec = LoraSpec(_save_wan(tmp_path / "wan.safetensors", factors), 0.5)
    fuse_loras(dits[0], [spec])
    fuse_loras(dits[1], [spec])
    for (name, a), b in zip(dits[0].state_dict().items(), dits[1].state_dict().values()):
        assert torch.equal(a, b), name  # bit-identical
    fuse_loras(dits[2], [spec, spec])  # twice into one model: exactly twice the delta
    _assert_fused(dits[2], tiny.transformer, _expected(tiny.transformer, factors, scale=1.0))
    assert [r["sha256"] for r in fused_loras(dits[2])] == [fused_loras(dits[0])[0]["sha256"]] * 2


@pytest.mark.parametrize("save, module, named", [
    (_save_diffusers, "blocks.7.attn1.to_q", "transformer.blocks.7.attn1.to_q.lora_A.weight"),
    (_save_diffusers, "blocks.0.attn1.to_qq", "transformer.blocks.0.attn1.to_qq.lora_A.weight"),
    (_save_wan, "blocks.9.attn2.to_k", "transformer.blocks.9.attn2.to_k.lora_A.weight"),
])
def test_keys_matching_nothing_are_an_error_naming_them(tiny, dit, tmp_path, save, module,
                                                        named):
    factors = _factors(dit, ["blocks.0.attn1.to_q"], seed=4)
    g = torch.Generator().manual_seed(5)
    factors[module] = (torch.randn(RANK, 256, generator=g), torch.randn(256, RANK, generator=g),
                       None)
    with pytest.raises(ValueError, match="match no Linear") as err:
        fuse_loras(dit, [LoraSpec(save(tmp_path / "wrong.safetensors", factors), 1.0)])
    assert named in str(err.value)
    assert "blocks.0.attn1.to_q.lora" not in str(err.value)  # only the unmatched are named
    _assert_fused(dit, tiny.transformer, {})  # nothing was fused


def test_shapes_that_do_not_fit_foreign_keys_and_junk_are_errors(dit, tmp_path):
    bad = tmp_path / "shape.safetensors"
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(RANK, 100),
               "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.zeros(256, RANK)}, str(bad))
    with pytest.raises(ValueError, match=r"lora_A.weight \(4, 100\) vs blocks.0.attn1.to_q"):
        fuse_loras(dit, [LoraSpec(bad, 1.0)])
    foreign = tmp_path / "text_encoder.safetensors"
    save_file({"text_encoder.encoder.block.0.lora_A.weight": torch.zeros(RANK, 8)}, str(foreign))
    with pytest.raises(ValueError, match="text_encoder.encoder.block.0.lora_A.weight"):
        fuse_loras(dit, [LoraSpec(foreign, 1.0)])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors is not a readable safetensors file"):
        fuse_loras(dit, [LoraSpec(junk, 1.0)])


def test_parse_lora_arg(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"x")
    assert parse_lora_arg(str(path)) == LoraSpec(path, 1.0)
    assert parse_lora_arg(f"{path}:0.8") == LoraSpec(path, 0.8)
    assert parse_lora_arg(f"{path}:-1") == LoraSpec(path, -1.0)
    with pytest.raises(ValueError,
                       match=r"SCALE 'strong' is not a number; expected --lora PATH\[:SCALE\]"):
        parse_lora_arg(f"{path}:strong")
    with pytest.raises(ValueError, match="finite"):
        parse_lora_arg(f"{path}:nan")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        parse_lora_arg(f"{tmp_path}/missing.safetensors:0.5")


def test_cli_refuses_a_bad_lora_argument(tmp_path, capsys):
    from t2vserve.cli import main

    assert main(["export", "--out", str(tmp_path / "x"), "--lora", "nowhere.safetensors"]) == 2
    assert "LoRA file nowhere.safetensors not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


REQUEST = dict(prompt="a red cup rotating slowly on a wooden table", negative_prompt="模糊，静止",
               width=64, height=64, num_frames=5, steps=2, guidance_scale=5.0, seed=7)


def _assert_frames_match(ours, theirs, plain):
    assert ours.shape == theirs.shape == (5, 64, 64, 3)
    # the tolerance of test_pipeline.py::test_frames_equal_diffusers_wan_pipeline
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= 1, diff.max()
    assert (diff > 0).mean() < 0.01
    # and the LoRA matters: without it the frames are far off
    assert np.abs(plain.astype(int) - theirs.astype(int)).max() > 10


@pytest.fixture(scope="module")
def lightning(tiny, tmp_path_factory):
    """A Wan-layout LoRA with alphas, its scale, and diffusers' frames with and without it."""
    from t2vserve.schema import GenerationRequest

    request = GenerationRequest(**REQUEST)
    factors = _factors(tiny.transformer, MODULES, seed=6, alphas=[8.0, 2.0])
    lora = _save_wan(tmp_path_factory.mktemp("lora") / "lightning.safetensors", factors)
    theirs = wan_pipeline_frames(tiny, request, transformer=copy.deepcopy(tiny.transformer),
                                 lora=lora, scale=0.8)
    plain = wan_pipeline_frames(tiny, request, transformer=copy.deepcopy(tiny.transformer))
    return lora, 0.8, request, theirs, plain


def test_fused_dit_in_our_pipeline_equals_diffusers_wan_pipeline_with_it_fused(tiny, lightning):
    import dataclasses

    from t2vserve.pipeline import Pipeline

    lora, scale, request, theirs, plain = lightning
    dit = copy.deepcopy(tiny.transformer)
    fuse_loras(dit, [LoraSpec(lora, scale)])
    ours = Pipeline.from_components(dataclasses.replace(tiny, transformer=dit)).generate(request)
    _assert_frames_match(ours, theirs, plain)


def test_exported_dit_with_a_lora_equals_diffusers_wan_pipeline_with_it_fused(tiny, lightning,
                                                                            tmp_path):
    # export_preset's DiT step on its own (the VAE's export takes most of a whole export's
    # time); the whole CLI export is the slow test below
    import dataclasses

    from t2vserve.export.onnx_export import export_network
    from t2vserve.export.specs import DIT
    from t2vserve.export.wrappers import DiTExport
    from t2vserve.pipeline import Pipeline
    from t2vserve.runners import OnnxRuntimeRunner

    lora, scale, request, theirs, plain = lightning
    dit = copy.deepcopy(tiny.transformer)
    fuse_loras(dit, [LoraSpec(lora, scale)])
    export_network(DiTExport(dit), DIT, DIT.sample(tiny.preset), tmp_path / "dit.onnx")
    pipe = Pipeline.from_components(dataclasses.replace(tiny, transformer=dit))
    pipe.dit = OnnxRuntimeRunner(tmp_path / "dit.onnx")
    _assert_frames_match(pipe.generate(request), theirs, plain)


# a whole export (~80 s on 2 cores): `make soak` runs it; the exported DiT with the LoRA fused
# is compared with diffusers in the normal suite by the test above
@pytest.mark.soak
def test_export_with_a_lora_equals_diffusers_wan_pipeline_with_it_fused(tiny, lightning, tmp_path):
    from t2vserve.cli import main
    from t2vserve.export.onnx_export import weight_hash
    from t2vserve.pipeline import Pipeline

    lora, scale, request, theirs, plain = lightning
    out = tmp_path / "artifacts"
    assert main(["export", "--preset", "tiny", "--out", str(out), "--lora", f"{lora}:{scale}"]) == 0

    manifest = json.loads((out / "manifest.json").read_text())
    [record] = manifest["loras"]
    assert (record["file"], record["scale"], record["layout"], record["layers"]) == (
        "lightning.safetensors", scale, "wan", len(MODULES))
    assert manifest["weight_hash"] != weight_hash(tiny.text_encoder, tiny.transformer, tiny.vae)
    _assert_frames_match(Pipeline.from_artifacts(out).generate(request), theirs, plain)
