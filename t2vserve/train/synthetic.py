"""Procedurally rendered product-showcase clips (numpy only) with EN/ZH captions, for training
the tiny preset: the vocabulary, where each product stands and how it moves, captions and
the dataset plan. How the products look is drawing.py; the probes that judge generated clips
are in measures.py."""

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t2vserve.train.drawing import (
    DRAW, EXTENT, SHADOW_RX, TURNTABLE_B, TURNTABLE_R, backdrop, composite, f32, gauss, turntable,
)

PRODUCTS = {
    "cup": {"en": ["cup", "mug"], "zh": ["杯子", "保温杯"]},
    "box": {"en": ["box"], "zh": ["盒子"]},
    "bottle": {"en": ["bottle"], "zh": ["瓶子"]},
    "ball": {"en": ["ball"], "zh": ["球"]},
    "earphones": {"en": ["earphones", "headphones"], "zh": ["耳机"]},
}
# hues: red 357, orange 29, yellow 54, green 132, blue 223, purple 276 (>= 25 degrees apart)
COLOURS = {
    "red": {"rgb": (205, 30, 40), "zh": "红色"},
    "green": {"rgb": (40, 165, 65), "zh": "绿色"},
    "blue": {"rgb": (35, 85, 215), "zh": "蓝色"},
    "yellow": {"rgb": (235, 215, 30), "zh": "黄色"},
    "white": {"rgb": (238, 238, 234), "zh": "白色"},
    "black": {"rgb": (32, 32, 35), "zh": "黑色"},
    "orange": {"rgb": (240, 125, 20), "zh": "橙色"},
    "purple": {"rgb": (130, 50, 185), "zh": "紫色"},
}
# en: the phrase after "on"; zh: the name and the locative that follows it (木桌上, 摄影棚里)
BACKGROUNDS = {
    "wooden table": {"en": "a wooden table", "zh": "木桌", "loc": "上"},
    "white studio": {"en": "a white studio background", "zh": "白色摄影棚", "loc": "里"},
    "grey": {"en": "a grey background", "zh": "灰色背景", "loc": "上"},
}
# Every phrase contains the motion's key (en) or its "zh" word, so captions can be checked.
# en: shot phrases; en_sentence: a whole caption; zh_shot: after a comma; zh_verb: after
# "在<place>"; zh_adj: before "的<product>".
MOTIONS = {
    "rotating": {"zh": "旋转", "en": ["rotating slowly", "slowly rotating on a turntable", "rotating on a turntable"],
                 "en_sentence": "{obj} rotating slowly on {bg}",
                 "zh_shot": ["缓慢旋转", "在转台上旋转"], "zh_verb": ["缓慢旋转", "匀速旋转"],
                 "zh_adj": ["旋转", "缓慢旋转"]},
    "zooming in": {"zh": "放大", "en": ["zooming in", "camera slowly zooming in", "the camera zooming in"],
                   "en_sentence": "{obj} on {bg} as the camera is zooming in",
                   "zh_shot": ["镜头缓慢推近放大", "镜头逐渐放大"], "zh_verb": ["，镜头缓慢推近放大", "，镜头逐渐放大"],
                   "zh_adj": ["逐渐放大", "镜头放大"]},
    "panning": {"zh": "平移", "en": ["panning", "camera panning across", "the camera panning sideways"],
                "en_sentence": "{obj} on {bg} as the camera is panning across",
                "zh_shot": ["镜头缓慢平移", "镜头水平平移"], "zh_verb": ["，镜头缓慢平移", "，镜头水平平移"],
                "zh_adj": ["平移", "镜头平移"]},
    "still": {"zh": "静止", "en": ["still", "still shot", "standing still"],
              "en_sentence": "{obj} standing still on {bg}",
              "zh_shot": ["画面静止", "静止画面"], "zh_verb": ["静止不动", "静止摆放"], "zh_adj": ["静止", "静止不动"]},
}
LANGUAGES = ("en", "zh")


def render_clip(product, colour, background, motion, *, width=128, height=128, frames=17, seed=0):
    """One clip, uint8 (frames, height, width, 3): the product ~40 % of the height, centred,
    lit from the upper left with a contact shadow. rotating: one turn per clip (loops) on a
    turntable whose dark and light quarters turn with it; zooming in: 1.0 -> 1.5x about the
    object; panning: the object slides left to right across 30 % of the width; still:
    identical frames. All randomness (size, position, tint, background tone) comes from
    `seed`."""
    for key, table in ((product, PRODUCTS), (colour, COLOURS), (background, BACKGROUNDS), (motion, MOTIONS)):
        if key not in table:
            raise ValueError(f"unknown {key!r}; known: {sorted(table)}")
    rng = np.random.default_rng(seed)
    scale = height * 0.42 * rng.uniform(0.93, 1.07)
    ox, oy = rng.uniform(-0.02, 0.02) * width, rng.uniform(-0.02, 0.02) * height
    col = np.clip(np.array(COLOURS[colour]["rgb"]) + rng.integers(-6, 7, 3), 0, 255)
    rot0 = rng.uniform(-0.2, 0.2)
    bgp = {"tone": rng.uniform(0.95, 1.04), "horizon": rng.uniform(0.02, 0.07), "phase": rng.uniform(0, 6.28)}

    n = 1 if motion == "still" else frames  # a still clip is one frame repeated
    i = np.arange(n, dtype=np.float32)
    t = i / max(frames - 1, 1)
    zoom = 1 + 0.5 * t if motion == "zooming in" else np.ones(n, np.float32)
    pan = (t - 0.5) * 0.3 * width if motion == "panning" else np.zeros(n, np.float32)
    rot = rot0 + (2 * np.pi / frames) * i if motion == "rotating" else np.full(n, rot0, np.float32)
    cx, cy = width / 2 + ox + pan, height / 2 + oy + np.zeros(n, np.float32)  # the object's centre
    ppu = scale * zoom

    # the camera zooms about the object: world = (screen - centre) / zoom; a panning object
    # slides over a fixed background (which hardly varies across anyway)
    moving = motion == "zooming in"
    k = n if moving else 1
    xs, ys = np.arange(width, dtype=np.float32) + 0.5, np.arange(height, dtype=np.float32) + 0.5
    X = ((xs[None, None] - width / 2 - ox) / zoom[:k, None, None] + ox) / height
    Y = ((ys[None, :, None] - height / 2 - oy) / zoom[:k, None, None] + oy) / height
    bg = backdrop(background, X, Y, bgp)
    out = np.empty((n, 3, height, width), np.uint8)
    np.add(bg, 0.5, out=out, casting="unsafe")  # backgrounds stay below 255

    # the object is drawn in a window per frame, one size per group of frames so the group is
    # one array; zooming clips use three groups, as the object grows 1.5x
    half, up = EXTENT[product]
    bottom = 0.62  # object units below the centre the window reaches (past the shadow)
    if motion == "rotating":
        half, bottom = max(half, TURNTABLE_R + 0.02), 0.52 + TURNTABLE_B
    f3 = lambda a: f32(a)[:, None, None]  # noqa: E731
    for g in np.array_split(np.arange(n), min(n, 3) if motion == "zooming in" else 1):
        cw = int(min(width, np.ceil((2 * half * ppu[g]).max()) + 2))
        ch = int(min(height, np.ceil(((bottom - up) * ppu[g]).max()) + 2))
        x0 = np.clip(np.floor(cx[g] - half * ppu[g]), 0, width - cw).astype(int)
        y0 = np.clip(np.floor(cy[g] + up * ppu[g]), 0, height - ch).astype(int)
        crop = np.stack([bg[j if moving else 0, :, y:y + ch, x:x + cw] for j, x, y in zip(g, x0, y0)])
        u = (xs[None, None, :cw] + f3(x0) - f3(cx[g])) / f3(ppu[g])
        v = (ys[None, :ch, None] + f3(y0) - f3(cy[g])) / f3(ppu[g])
        su, sv = u * (1 / SHADOW_RX[product]), (v - 0.5) * (1 / 0.075)
        shadow = gauss(2.5 * su * su) * gauss(2.5 * sv * sv)  # separable: two thin exps
        layers = DRAW[product](u, v, f3(ppu[g]), f3(rot[g]), col)
        if motion == "rotating":
            layers = turntable(u, v, f3(ppu[g]), f3(rot[g])) + layers
        crop = composite(crop, layers, shadow)
        for j, x, y, c in zip(g, x0, y0, crop):
            out[j, :, y:y + ch, x:x + cw] = c
    # channels last; np.stack of the planes is several times faster than a transpose copy
    clip = np.stack([out[:, 0], out[:, 1], out[:, 2]], -1)
    return np.repeat(clip, frames, 0) if n < frames else clip


def caption(product, colour, background, motion, language, rng):
    """A caption naming colour, product and motion (and mostly the background) in `language`."""
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    m, b = MOTIONS[motion], BACKGROUNDS[background]
    k = int(rng.integers(6))
    if language == "en":
        p, c, bg = pick(PRODUCTS[product]["en"]), colour, b["en"]
        obj = f"a pair of {c} {p}" if product == "earphones" else f"{'an' if c[0] in 'aeiou' else 'a'} {c} {p}"
        shot = pick(m["en"])
        return [f"{obj} on {bg}, {shot}", f"{c} {p} on {bg}, {shot}", f"product shot of {obj} on {bg}, {shot}",
                f"close-up of {obj}, {shot}", f"{shot}: {obj} on {bg}",
                m["en_sentence"].format(obj=obj, bg=bg)][k]
    if language == "zh":
        p, c, place = pick(PRODUCTS[product]["zh"]), COLOURS[colour]["zh"], b["zh"] + b["loc"]
        return [f"{c}{p}在{place}{pick(m['zh_verb'])}", f"{place}的{c}{p}，{pick(m['zh_shot'])}",
                f"{place}{pick(m['zh_adj'])}的{c}{p}", f"{c}{p}产品展示，{pick(m['zh_shot'])}，{b['zh']}",
                f"{c}{p}特写，{pick(m['zh_shot'])}", f"{c}{p}，{b['zh']}，{pick(m['zh_shot'])}"][k]
    raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")


@dataclass(frozen=True)
class Sample:
    product: str
    colour: str
    background: str
    motion: str
    language: str
    caption: str
    seed: int


def sample_plan(n, seed=0):
    """n samples cycling over all 960 (attributes x language) combinations, each cycle in a
    fresh shuffled order. Colours stay balanced (+-1) in every prefix and the other
    attributes nearly so: each pick is the least-used combination, ties in shuffled order."""
    keys = [list(PRODUCTS), list(COLOURS), list(BACKGROUNDS), list(MOTIONS), list(LANGUAGES)]
    grid = np.stack(np.meshgrid(*[np.arange(len(k)) for k in keys], indexing="ij"), -1).reshape(-1, 5)
    rng = np.random.default_rng(seed)
    plan = []
    while len(plan) < n:
        left = grid[rng.permutation(len(grid))]
        counts = [np.zeros(len(k), np.int64) for k in keys]
        while len(left) and len(plan) < n:
            # colour count dominates the score, so colours round-robin exactly
            score = sum(counts[a][left[:, a]] * (1000 if a == 1 else 1) for a in range(5))
            j = int(np.argmin(score))
            combo, left = left[j], np.delete(left, j, 0)
            for a in range(5):
                counts[a][combo[a]] += 1
            names = [keys[a][combo[a]] for a in range(5)]
            plan.append(Sample(*names, caption(*names, rng), int(rng.integers(2**31))))
    return plan


def iter_dataset(n, seed=0, width=128, height=128, frames=17):
    """Yields (Sample, uint8 clip) for sample_plan(n, seed)."""
    for s in sample_plan(n, seed):
        yield s, render_clip(s.product, s.colour, s.background, s.motion,
                             width=width, height=height, frames=frames, seed=s.seed)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Render synthetic product clips for eyeballing.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--fps", type=int, default=16)
    args = ap.parse_args(argv)
    from t2vserve.media import encode_mp4
    from t2vserve.train.measures import contact_sheet

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clips, labels, lines = [], [], []
    for i, (s, clip) in enumerate(iter_dataset(args.n, args.seed, args.width, args.height, args.frames)):
        (out / f"clip_{i:03d}.mp4").write_bytes(encode_mp4(clip, args.fps))
        clips.append(clip)
        labels.append(f"{s.colour} {s.product}, {s.background}, {s.motion}")
        lines.append(f"clip_{i:03d}.mp4\t{s.caption}")
    (out / "captions.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    contact_sheet(clips, labels, out / "sheet.png")
    print(f"wrote {len(clips)} clips, captions.tsv and sheet.png to {out}")


if __name__ == "__main__":
    main()
