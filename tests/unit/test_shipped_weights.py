"""The `tiny` preset ships trained weights (issue 8): small, documented, made by the recipe
`make train-tiny` runs, and evaluated as passing what the served-stack test asserts."""

import json

import pytest

from t2vserve.presets import TINY_WEIGHTS, build_components, trained_tiny_available
from t2vserve.train.evaluate import MIN_COLOUR_HITS, MIN_GUIDANCE_DROP, MIN_MOTION_PAIRS

# committed since issue 8; `make train-tiny` remakes them. Skipped only where they were removed
pytestmark = pytest.mark.skipif(not trained_tiny_available(),
                                reason="no trained tiny weights in t2vserve/assets/tiny-weights")


def test_trained_tiny_weights_are_shipped_small_and_documented():
    files = {p.name: p.stat().st_size for p in TINY_WEIGHTS.iterdir()}
    for name in ("vae.safetensors", "transformer.safetensors", "text_encoder.safetensors",
                 "latents.json", "summary.json", "eval.json", "losses.png", "MODEL_CARD.md"):
        assert name in files, name
    assert sum(files.values()) < 40 * 2**20
    card = (TINY_WEIGHTS / "MODEL_CARD.md").read_text()
    for heading in ("## Data", "## Training", "## What it draws", "## What it cannot draw"):
        assert heading in card


def test_shipped_run_is_the_default_recipe_and_passed_its_evaluation():
    summary = json.loads((TINY_WEIGHTS / "summary.json").read_text())
    # made by `make train-tiny` itself: no reused VAE, no probe, no wrong captions, in time
    assert summary["vae_from"] is None and summary["dit_stop"] is None
    assert summary["caption_noise"] == 0 and summary["seed"] == 0
    assert summary["minutes"] <= 60
    result = json.loads((TINY_WEIGHTS / "eval.json").read_text())
    assert result["colour_hits"] >= MIN_COLOUR_HITS
    assert result["colour_hits_guidance_1"] <= result["colour_hits"] - MIN_GUIDANCE_DROP
    assert result["motion_pairs_ordered"] >= MIN_MOTION_PAIRS


def test_default_tiny_loads_the_shipped_weights_and_random_stays_available():
    trained = build_components("tiny")
    random = build_components("tiny", weights="random")
    w = trained.transformer.state_dict()["proj_out.weight"]
    assert not w.equal(random.transformer.state_dict()["proj_out.weight"])
    stats = json.loads((TINY_WEIGHTS / "latents.json").read_text())
    assert list(trained.vae.config.latents_std) == stats["latents_std"]
    assert list(random.vae.config.latents_std) != stats["latents_std"]
