"""The few-step tiny student (t2vserve/train/distill.py) and what `make distill-tiny` shipped
in t2vserve/assets/tiny-distilled/."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from t2vserve.presets import build_component, trained_tiny_available
from t2vserve.train import distill

SHIPPED = Path(distill.__file__).parents[1] / "assets" / "tiny-distilled"
pytestmark = pytest.mark.skipif(not trained_tiny_available(), reason="no trained tiny weights")


def tiny_dit():
    return build_component("tiny", "transformer")


def few_iterations(seed: int) -> dict[str, torch.Tensor]:
    """Three student steps (the last on its own rollout) on two pairs."""
    from t2vserve.export.wrappers import use_export_attention
    from t2vserve.train.dit import padded_context_attention

    g = torch.Generator().manual_seed(123)
    x0, noise = torch.randn(2, 48, 5, 8, 8, generator=g), torch.randn(2, 48, 5, 8, 8, generator=g)
    cond = torch.randn(2, 12, 32, generator=g)
    cond[:, 8:] = 0  # prompt padding, as the text encoder leaves it
    dit = tiny_dit()
    params = distill.add_lora_(dit, rank=4, seed=seed)
    procs = padded_context_attention(dit)
    distill.train_student(dit, params, procs, x0, noise, cond, steps=3, batch=2, lr=1e-3,
                          seed=seed, rollout_from=2, log=lambda msg: None)
    use_export_attention(dit)
    return distill.lora_state_dict(dit)


def test_training_is_deterministic_from_its_seed():
    torch.set_num_threads(2)
    a, b, c = few_iterations(0), few_iterations(0), few_iterations(1)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(b_.abs().max() > 0 for k, b_ in a.items() if k.endswith("lora_B.weight"))
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed matters


def test_shipped_lora_changes_exactly_the_layers_it_names():
    lora = load_file(str(SHIPPED / distill.LORA_FILE))
    assert all(k.startswith("transformer.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
               for k in lora)
    base, fused = tiny_dit(), tiny_dit()
    named = distill.fuse_lora_(fused, lora)
    assert named == sorted(distill.lora_targets(fused))
    before, after = base.state_dict(), fused.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {f"{p}.weight" for p in named}
    p = named[0]
    want = before[f"{p}.weight"] + (lora[f"transformer.{p}.lora_B.weight"]
                                    @ lora[f"transformer.{p}.lora_A.weight"])
    assert torch.equal(after[f"{p}.weight"], want)


def test_a_lora_naming_no_layer_is_refused_by_name():
    lora = load_file(str(SHIPPED / distill.LORA_FILE))
    lora["transformer.blocks.9.attn1.to_q.lora_A.weight"] = torch.zeros(1, 256)
    lora["transformer.blocks.9.attn1.to_q.lora_B.weight"] = torch.zeros(256, 1)
    with pytest.raises(ValueError, match=r"blocks\.9\.attn1\.to_q"):
        distill.fuse_lora_(tiny_dit(), lora)


def test_shipped_file_is_at_most_10_mb():
    assert (SHIPPED / distill.LORA_FILE).stat().st_size <= 10 * 1024 * 1024


def test_shipped_sampling_is_four_euler_steps_without_guidance():
    cfg = json.loads((SHIPPED / "sampling.json").read_text())
    distill.validate_sampling(cfg)
    assert cfg["steps"] == 4 and len(cfg["sigmas"]) == 5 and cfg["sigmas"][-1] == 0.0
    assert all(a > b for a, b in zip(cfg["sigmas"], cfg["sigmas"][1:]))
    assert cfg["guidance_scale"] == 1.0 and cfg["teacher"]["steps"] == 50
    bad = {**cfg, "sigmas": [1.0, 0.5, 0.75, 0.2, 0.0]}
    with pytest.raises(ValueError, match="sigmas must decrease"):
        distill.validate_sampling(bad)


def test_shipped_student_draws_the_recorded_colours_in_four_steps():
    # a quarter of eval.json's 16 colour prompts (both languages, hits and a miss), to stay fast
    from t2vserve.export.wrappers import DiTExport
    from t2vserve.pipeline import Pipeline, initial_noise, latent_shape
    from t2vserve.presets import build_components
    from t2vserve.runners import TorchRunner, to_host
    from t2vserve.train.evaluate import colour_prompt
    from t2vserve.train.measures import dominant_hue

    torch.set_num_threads(2)
    recorded = json.loads((SHIPPED / "eval.json").read_text())["student"]
    assert recorded["colour_hits"] >= distill.MIN_COLOUR_HITS
    cfg = json.loads((SHIPPED / "sampling.json").read_text())
    comps = build_components("tiny")
    distill.fuse_lora_(comps.transformer, SHIPPED / distill.LORA_FILE)
    pipe = Pipeline.from_components(comps)
    dit = TorchRunner(DiTExport(comps.transformer), ["latents", "timestep", "prompt_embeds"],
                      ["noise_pred"])
    z = initial_noise(latent_shape(comps.preset, 128, 128, 17), distill.EVAL_SEED)
    picked = recorded["colour"][::5]  # red en, blue zh, black en, purple zh
    assert any(w == g for w, _, g in picked) and any(w != g for w, _, g in picked)
    for wanted, language, got in picked:
        latents = distill.few_step_loop(dit, z, pipe.encode([colour_prompt(wanted, language)]),
                                        cfg["sigmas"])
        assert dominant_hue(to_host(pipe.decode(latents))[0])[0] == got, (wanted, language)


def test_shipped_lora_fuses_the_same_through_diffusers_loader():
    # the served variant fuses it at export through diffusers' loader (export/lora.py)
    lora_export = pytest.importorskip("t2vserve.export.lora")
    ours, theirs = tiny_dit(), tiny_dit()
    distill.fuse_lora_(ours, SHIPPED / distill.LORA_FILE)
    lora_export.fuse_loras(theirs, [lora_export.parse_lora_arg(str(SHIPPED / distill.LORA_FILE))])
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
