"""`make train-tiny`'s script on a few steps: deterministic from its seed, writes what the
preset loads, and the pieces of its VAE loss do what they say."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from t2vserve.presets import build_components, trained_tiny_available
from t2vserve.train import synthetic
from t2vserve.train.dit import (colour_swap_gap, compact_context, embed, latent_cover,
                                mistagged_colours, ramp_pad_bias, swapped_colour_captions,
                                padded_context_attention)
from t2vserve.train.train_tiny import main
from t2vserve.train.vae import _vae_loss, _weights

FEW = ["--vae-steps", "2", "--vae-batch", "1", "--vae-full-steps", "1", "--dit-steps", "3",
       "--dit-batch", "2", "--clips", "2", "--check-clips", "1"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    outs = [tmp_path_factory.mktemp(f"run{k}") for k in range(2)]
    for out in outs:
        assert main(["--out", str(out), *FEW]) == 0
    return outs


def test_same_seed_same_weights(two_runs):
    a, b = two_runs
    for name in ("vae", "transformer", "text_encoder"):
        ta, tb = load_file(a / f"{name}.safetensors"), load_file(b / f"{name}.safetensors")
        assert ta.keys() == tb.keys()
        assert all(torch.equal(ta[k], tb[k]) for k in ta), name
    assert (a / "latents.json").read_text() == (b / "latents.json").read_text()


def test_outputs_load_as_the_tiny_preset(two_runs):
    out = two_runs[0]
    assert trained_tiny_available(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dit_steps"] == 3 and np.isfinite(summary["dit_final_loss"])
    assert np.isfinite(summary["dit_colour_gap"]) and summary["dit_seed"] == summary["seed"] == 0
    losses = json.loads((out / "losses.json").read_text())
    assert (len(losses["vae"]), len(losses["dit"])) == (3, 3)
    assert (out / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    comps = build_components("tiny", weights_dir=out)
    stats = json.loads((out / "latents.json").read_text())
    assert list(comps.vae.config.latents_std) == stats["latents_std"]
    trained = load_file(out / "transformer.safetensors")
    assert torch.equal(comps.transformer.state_dict()["proj_out.weight"], trained["proj_out.weight"])


def test_loss_weights_the_product_and_its_colour():
    clip = synthetic.render_clip("cup", "red", "white studio", "still", seed=1, frames=5)
    w = _weights(clip[None], 4.0)
    assert w.shape == (1, 1, 5, 128, 128)
    assert set(torch.unique(w).tolist()) == {1.0, 4.0}
    assert 0.05 < (w == 4.0).float().mean() < 0.4  # the product, not the backdrop
    x = torch.from_numpy(clip).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]
    assert _vae_loss(x, x, w) == 0
    # the same error costs more on the product than on the backdrop
    on_product, on_backdrop = x.clone(), x.clone()
    on_product[:, :, :, 64, 64] += 0.5   # the cup is centred
    on_backdrop[:, :, :, 2, 2] += 0.5
    assert _vae_loss(on_product, x, w) > _vae_loss(on_backdrop, x, w)


def test_mistagged_colours_name_a_wrong_colour_at_the_asked_rate():
    plan = synthetic.sample_plan(960, seed=1)
    named = mistagged_colours(plan, 0.35, seed=3)
    assert named == mistagged_colours(plan, 0.35, seed=3)
    pairs = [(s.colour, c) for s, pair in zip(plan, named) for c in pair]
    wrong = [(true, c) for true, c in pairs if c != true]
    assert abs(len(wrong) / len(pairs) - 0.35) < 0.03
    assert {c for _, c in wrong} == set(synthetic.COLOURS)  # every colour stands in for others
    assert all(c == s.colour for s, pair in zip(plan, mistagged_colours(plan, 0.0, 3)) for c in pair)


def test_dit_loss_weights_cover_the_product_latent_cells():
    clip = synthetic.render_clip("cup", "red", "white studio", "still", seed=1, frames=17)
    cover = latent_cover(clip[None], 5, 8, 8)  # the tiny VAE's latent grid for 128x128x17
    assert cover.shape == (1, 1, 5, 8, 8)
    assert set(torch.unique(cover).tolist()) == {0.0, 1.0}
    assert cover[0, 0, :, 3:5, 3:5].min() == 1      # the centred cup, in every latent frame
    assert cover[0, 0, :, 0, 0].max() == 0          # not the corner of the backdrop
    assert 0.05 < cover.mean() < 0.5
    # a panning product covers cells that a still one does not
    pan = synthetic.render_clip("cup", "red", "white studio", "panning", seed=1, frames=17)
    assert not torch.equal(latent_cover(pan[None], 5, 8, 8)[0, 0, -1], cover[0, 0, -1])


def test_training_forward_is_the_served_dit_on_the_full_padded_context():
    """train_dit's shortcuts (prompts cut short of their zero padding with a log-count bias,
    one timestep per sample) compute what the exported DiT computes on all 256 positions."""
    from t2vserve.export.wrappers import DiTExport
    from t2vserve.text_corpus import WAN_DEFAULT_NEGATIVE_PROMPT

    comps = build_components("tiny", seed=0, weights="random")
    text_len = comps.preset.text_len
    prompts = ["a red cup rotating slowly on a wooden table", "红色杯子在木桌上缓慢旋转", "",
               WAN_DEFAULT_NEGATIVE_PROMPT]
    cond = embed(comps.text_encoder, comps.tokenizer, prompts, text_len)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 48, 5, 8, 8, generator=g)
    sigma = torch.tensor([0.9, 0.5, 0.2, 0.99])
    dit = DiTExport(comps.transformer)
    with torch.no_grad():
        served = dit(x, sigma * 1000, cond)
        context, bias = compact_context(cond, text_len)
        assert context.shape[1] < text_len // 2
        procs = padded_context_attention(comps.transformer)

        def train_forward(b):
            for proc in procs:
                proc.bias = b
            return comps.transformer(hidden_states=x, timestep=sigma * 1000,
                                     encoder_hidden_states=context, return_dict=False)[0]

        assert torch.allclose(train_forward(bias), served, atol=1e-5)
        # the bias is what makes it exact: without it the pads weigh less and the output moves
        assert (train_forward(None) - served).abs().max() > 1e-3


def test_dit_seed_changes_the_dit_only_and_bad_options_are_refused(two_runs, tmp_path, capsys):
    assert main(["--out", str(tmp_path), *FEW, "--dit-seed", "5", "--pad-warmup", "2",
                 "--dit-stop", "2"]) == 0
    base = two_runs[0]
    for name, same in (("vae", True), ("text_encoder", True), ("transformer", False)):
        ta, tb = (load_file(d / f"{name}.safetensors") for d in (base, tmp_path))
        assert all(torch.equal(ta[k], tb[k]) for k in ta) == same, name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["dit_seed"], summary["dit_stop"]) == (5, 2)
    assert len(json.loads((tmp_path / "losses.json").read_text())["dit"]) == 2  # of 3 steps
    for flag, value in (("--pad-warmup", "-1"), ("--caption-noise", "1"), ("--dit-stop", "4"),
                        ("--dit-stop", "0")):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / "x"), *FEW, flag, value])
        assert flag in capsys.readouterr().err


def test_pad_bias_ramps_up_to_the_served_weight():
    comps = build_components("tiny", seed=0, weights="random")
    prompts = ["a red cup", "一个红色的杯子在木桌上缓慢旋转"]
    cond = embed(comps.text_encoder, comps.tokenizer, prompts, comps.preset.text_len)
    _, bias = compact_context(cond, comps.preset.text_len)
    assert bias.max() > 3  # log(pads in full / pads kept): the pads weigh ~100x a token
    assert torch.equal(ramp_pad_bias(bias, 0, 1000), torch.zeros_like(bias))
    assert torch.allclose(ramp_pad_bias(bias, 250, 1000), bias / 4)
    for step, warmup in ((1000, 1000), (5000, 1000), (0, 0)):
        assert torch.equal(ramp_pad_bias(bias, step, warmup), bias)


def test_colour_swap_gap_sees_only_the_colour_word():
    plan = synthetic.sample_plan(3, seed=4)
    right, wrong = swapped_colour_captions(plan)
    for s, r, w in zip(plan, right, wrong):
        # the same template: the two captions differ in one word, the colour (and "a"/"an")
        r_words, w_words = (re.sub(r"\ban\b", "a", t).split() for t in (r, w))
        diff = [(a, b) for a, b in zip(r_words, w_words) if a != b]
        assert len(r_words) == len(w_words) and len(diff) == 1, (r, w)
        assert diff[0][0] == s.colour and diff[0][1] in synthetic.COLOURS
    comps = build_components("tiny", seed=0, weights="random")
    text_len = comps.preset.text_len
    er, ew = (embed(comps.text_encoder, comps.tokenizer, c, text_len) for c in (right, wrong))
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 48, 5, 8, 8, generator=g)
    cover = (torch.rand(3, 1, 5, 8, 8, generator=g) > 0.7).float()
    assert colour_swap_gap(comps.transformer, latents, cover, er, er.clone()) == 0.0
    assert abs(colour_swap_gap(comps.transformer, latents, cover, er, ew)) > 1e-6
