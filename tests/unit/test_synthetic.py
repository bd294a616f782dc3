import collections
import itertools
import re

import numpy as np
import pytest

from t2vserve.train.measures import contact_sheet, dominant_hue, motion_energy, object_mask
from t2vserve.train.synthetic import (
    BACKGROUNDS, COLOURS, LANGUAGES, MOTIONS, PRODUCTS, caption, iter_dataset, main, render_clip,
    sample_plan,
)


def test_shape_and_dtype():
    clip = render_clip("cup", "red", "wooden table", "rotating")
    assert clip.shape == (17, 128, 128, 3) and clip.dtype == np.uint8
    clip = render_clip("box", "blue", "grey", "zooming in", width=96, height=64, frames=5, seed=3)
    assert clip.shape == (5, 64, 96, 3) and clip.dtype == np.uint8


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="teapot"):
        render_clip("teapot", "red", "grey", "still")


@pytest.mark.parametrize("motion", list(MOTIONS))
def test_same_seed_same_bytes_other_seed_differs(motion):
    a = render_clip("bottle", "green", "white studio", motion, seed=7)
    assert a.tobytes() == render_clip("bottle", "green", "white studio", motion, seed=7).tobytes()
    assert a.tobytes() != render_clip("bottle", "green", "white studio", motion, seed=8).tobytes()


def test_every_colour_is_recognised_on_every_product_and_background():
    # validates the renderer (the named colour dominates the object) and the classifier at once
    wrong = []
    combos = itertools.product(COLOURS, PRODUCTS, BACKGROUNDS)
    for i, (colour, product, background) in enumerate(combos):
        motion = list(MOTIONS)[i % len(MOTIONS)]
        clip = render_clip(product, colour, background, motion, seed=0)
        if motion == "rotating":
            clip = clip[:, :76]  # above the turntable (from 81 of 128 rows down), not the product
        got, conf = dominant_hue(clip)
        if got != colour or conf < 0.6:
            wrong.append((colour, product, background, motion, got, round(conf, 2)))
    assert not wrong


def test_a_rotating_product_turns_on_a_turntable_that_moves_more_than_the_product():
    still = render_clip("cup", "red", "wooden table", "still", seed=4)
    turning = render_clip("cup", "red", "wooden table", "rotating", seed=4)
    assert motion_energy(still) == 0.0
    # the turntable's rows: dark and light quarters there, and most of the change
    below, above = turning[:, 82:96], turning[:, :76]
    assert below.min() < 60 and below.max() > 190
    change = [np.abs(np.diff(rows.astype(int), axis=0)).sum() for rows in (below, above)]
    assert change[0] > change[1]
    assert motion_energy(turning) > 0.005


def test_dominant_hue_on_hand_made_frames():
    # independent of the renderer: a flat disc of each colour on each kind of backdrop
    y, x = np.mgrid[0:64, 0:64]
    disc = (x - 32) ** 2 + (y - 34) ** 2 < 14**2
    for name, spec in COLOURS.items():
        for backdrop in [(128, 128, 128), (240, 240, 238), (150, 100, 60)]:
            frame = np.empty((64, 64, 3), np.uint8)
            frame[:] = backdrop
            frame[disc] = (np.array(spec["rgb"]) * 0.85).astype(np.uint8)  # a little shaded
            if np.abs(frame[disc][0].astype(int) - backdrop).sum() < 60:
                continue  # a near-white disc on a near-white backdrop has nothing to find
            assert dominant_hue(frame)[0] == name, (name, backdrop)


def test_dominant_hue_ignores_a_cast_shadow():
    frame = np.full((64, 64, 3), 128, np.uint8)
    frame[20:40, 26:38] = (40, 90, 210)  # a small blue object
    frame[40:50, 10:54] = (70, 70, 70)  # a large, neutral, darker patch: its shadow
    assert dominant_hue(frame)[0] == "blue"


def test_motion_energy_scale():
    still = np.zeros((4, 8, 8, 3), np.uint8)
    assert motion_energy(still) == 0.0
    flicker = still.copy()
    flicker[1::2] = 255
    assert motion_energy(flicker) == pytest.approx(1.0)
    assert motion_energy(still[:1]) == 0.0


@pytest.mark.parametrize("product", list(PRODUCTS))
def test_still_is_static_and_every_motion_moves(product):
    energy = {m: motion_energy(render_clip(product, "orange", "grey", m, seed=1)) for m in MOTIONS}
    assert energy["still"] == 0.0
    for motion in ("rotating", "zooming in", "panning"):
        assert energy[motion] > 2e-4, (motion, energy)


def _centre_x(clip):
    return np.array([np.nonzero(object_mask(f))[1].mean() for f in clip])


@pytest.mark.parametrize("product", list(PRODUCTS))
def test_rotating_stays_put_while_panning_travels(product):
    rot = render_clip(product, "purple", "white studio", "rotating", seed=2)
    frame_change = [np.abs(np.diff(rot[i:i + 2].astype(int), axis=0)).mean() for i in range(16)]
    assert min(frame_change) > 0.02  # every frame differs from the one before
    assert np.ptp(_centre_x(rot)) < 0.04 * 128  # but the object stays where it is
    pan = _centre_x(render_clip(product, "purple", "white studio", "panning", seed=2))
    assert pan[-1] - pan[0] > 0.2 * 128  # left to right, ~30 % of the width
    zoom = render_clip(product, "purple", "white studio", "zooming in", seed=2)
    area = [object_mask(f).sum() for f in zoom[[0, -1]]]
    assert 1.6 < area[1] / area[0] < 2.9  # 1.5x in size is 2.25x in area


def test_object_is_centred_and_sized_like_a_product_shot():
    for product in PRODUCTS:
        ys, xs = np.nonzero(object_mask(render_clip(product, "blue", "grey", "still")[0]))
        assert 0.3 <= (ys.max() - ys.min() + 1) / 128 <= 0.5, product
        assert abs(xs.mean() - 64) < 8 and abs(ys.mean() - 64) < 12, product


def test_captions_name_colour_product_and_motion_in_their_language():
    rng = np.random.default_rng(0)
    with_background = collections.Counter()
    for product, colour, background, motion in itertools.product(PRODUCTS, COLOURS, BACKGROUNDS, MOTIONS):
        for _ in range(3):
            en = caption(product, colour, background, motion, "en", rng)
            assert en.isascii() and colour in en and motion in en, en
            assert any(p in en for p in PRODUCTS[product]["en"]), en
            with_background["en"] += BACKGROUNDS[background]["en"] in en
            zh = caption(product, colour, background, motion, "zh", rng)
            assert not re.search("[A-Za-z]", zh), zh
            assert COLOURS[colour]["zh"] in zh and MOTIONS[motion]["zh"] in zh, zh
            assert any(p in zh for p in PRODUCTS[product]["zh"]), zh
            with_background["zh"] += BACKGROUNDS[background]["zh"] in zh
    n = 3 * len(PRODUCTS) * len(COLOURS) * len(BACKGROUNDS) * len(MOTIONS)
    assert with_background["en"] > 0.6 * n and with_background["zh"] > 0.6 * n
    assert caption("cup", "red", "grey", "still", "en", np.random.default_rng(5)) == \
        caption("cup", "red", "grey", "still", "en", np.random.default_rng(5))
    with pytest.raises(ValueError):
        caption("cup", "red", "grey", "still", "fr", rng)


def test_sample_plan_is_balanced_complete_and_deterministic():
    plan = sample_plan(2000, seed=3)
    assert plan == sample_plan(2000, seed=3)
    assert plan != sample_plan(2000, seed=4)
    assert sample_plan(50, seed=3) == plan[:50]
    counts = collections.Counter()
    for i, s in enumerate(plan):
        counts[s.colour] += 1
        values = [counts[c] for c in COLOURS]
        assert max(values) - min(values) <= 1, i  # in every prefix
    combos = {(s.product, s.colour, s.background, s.motion, s.language) for s in plan[:960]}
    assert len(combos) == 5 * 8 * 3 * 4 * 2  # one full cycle holds each combination once
    for attr in ("product", "background", "motion", "language"):
        c = collections.Counter(getattr(s, attr) for s in plan[:200])
        assert max(c.values()) - min(c.values()) <= 2, (attr, c)
    s = plan[0]
    assert s.caption == s.caption.strip() and isinstance(s.seed, int) and s.language in LANGUAGES


def test_iter_dataset_renders_the_plan():
    items = list(iter_dataset(3, seed=1, width=64, height=48, frames=4))
    assert [s for s, _ in items] == sample_plan(3, seed=1)
    for s, clip in items:
        assert clip.shape == (4, 48, 64, 3)
        want = render_clip(s.product, s.colour, s.background, s.motion, width=64, height=48, frames=4, seed=s.seed)
        assert np.array_equal(clip, want)


def test_contact_sheet_and_cli(tmp_path):
    from PIL import Image

    clips = [render_clip("ball", c, "grey", "rotating", width=64, height=64, frames=6) for c in ("red", "blue")]
    contact_sheet(clips, ["red ball", "blue ball"], tmp_path / "s.png", frames_per_clip=3)
    sheet = np.asarray(Image.open(tmp_path / "s.png"))
    assert sheet.shape[1] > 3 * 64 and sheet.shape[0] > 2 * 64
    main(["--out", str(tmp_path / "cli"), "--n", "2", "--width", "64", "--height", "64", "--frames", "5"])
    out = tmp_path / "cli"
    assert sorted(p.name for p in out.glob("*.mp4")) == ["clip_000.mp4", "clip_001.mp4"]
    assert (out / "sheet.png").stat().st_size > 0
    assert len((out / "captions.tsv").read_text(encoding="utf-8").splitlines()) == 2
