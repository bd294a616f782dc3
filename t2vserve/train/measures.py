"""What a generated clip shows, measured without a model: the product's pixels, its dominant
named colour, how much it moves; and a contact sheet to look at clips."""

from pathlib import Path

import numpy as np

from t2vserve.train.synthetic import COLOURS


def _hue(r, g, b):
    # hue in degrees from the opponent axes: HSV's hue up to a smooth warp, and vectorised
    return np.degrees(np.arctan2(np.sqrt(3) * (g - b), 2 * r - g - b)) % 360


# the chromatic colours' hues; white and black are told apart by brightness instead
_HUES = {k: _hue(*np.array(c["rgb"]) / 255) for k, c in COLOURS.items() if np.ptp(c["rgb"]) > 80}


def object_mask(frame):
    """bool (H, W): pixels unlike the background, estimated per row from the left and right
    edge strips (backgrounds vary top to bottom - a wall over a table - more than across).
    Uniformly darkened background (a cast shadow) is left out unless nearly all of the
    candidate pixels look like that (a white object on white shades like a shadow)."""
    f = np.asarray(frame, np.float32)
    b = max(2, f.shape[1] // 32)
    edge = np.concatenate([f[:, :b], f[:, -b:]], 1)
    row_bg = np.median(edge, 1)
    noise = np.median(np.linalg.norm(edge - row_bg[:, None], axis=-1))
    mask = np.linalg.norm(f - row_bg[:, None], axis=-1) > max(40.0, 4 * noise)
    ratio = f / np.maximum(row_bg[:, None], 1.0)
    mean = ratio.mean(-1)
    shadow = ((np.abs(ratio - mean[..., None]).max(-1) < 0.08) & (mean > 0.45) & (mean < 0.93)
              & (row_bg.max(-1) > 60)[:, None])
    obj = mask & ~shadow
    return obj if obj.sum() >= 0.25 * mask.sum() else mask


def dominant_hue(clip):
    """(colour name, confidence in 0..1): the named colour most object pixels of the clip
    (or frame) are nearest to - by hue when saturated, else white/black by brightness."""
    clip = np.asarray(clip)
    frames = clip[None] if clip.ndim == 3 else clip[:: max(1, len(clip) // 8)]
    px = np.concatenate([f[object_mask(f)] for f in frames]).astype(np.float32) / 255.0
    if len(px) < 0.005 * frames[0].shape[0] * frames[0].shape[1] * len(frames):
        h, w = frames.shape[1:3]  # nothing stands out: take the central region
        px = frames[:, h // 4: 3 * h // 4, w // 4: 3 * w // 4].reshape(-1, 3).astype(np.float32) / 255
    mx, mn = px.max(1), px.min(1)
    chroma = mx - mn
    coloured = (chroma >= 0.1) & (chroma >= 0.25 * mx)
    hue = _hue(*px.T)
    names = list(_HUES)
    dist = np.abs((hue[:, None] - np.array([_HUES[k] for k in names])[None] + 180) % 360 - 180)
    votes = {k: 0 for k in COLOURS}
    for k, cnt in zip(names, np.bincount(dist[coloured].argmin(1), minlength=len(names))):
        votes[k] = int(cnt)
    votes["white"] = int(((~coloured) & (mx >= 0.42)).sum())
    votes["black"] = int(((~coloured) & (mx < 0.42)).sum())
    best = max(votes, key=votes.get)
    return best, votes[best] / max(sum(votes.values()), 1)


def motion_energy(clip):
    """Mean absolute frame-to-frame difference, 0..1."""
    clip = np.asarray(clip)
    if len(clip) < 2:
        return 0.0
    return float(np.abs(np.diff(clip.astype(np.int16), axis=0)).mean() / 255.0)


def contact_sheet(clips, labels, path, frames_per_clip=4):
    """PNG grid: one row per clip (frames_per_clip frames spread over it), its label below."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    h, w = clips[0].shape[1:3]
    pad, text_h = 4, 14
    sheet = Image.new("RGB", (pad + frames_per_clip * (w + pad), len(clips) * (h + text_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (clip, label) in enumerate(zip(clips, labels)):
        y = pad + r * (h + text_h + pad)
        for c, fi in enumerate(np.linspace(0, len(clip) - 1, frames_per_clip).round().astype(int)):
            sheet.paste(Image.fromarray(clip[fi]), (pad + c * (w + pad), y))
        draw.text((pad, y + h + 1), label, fill=(0, 0, 0), font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
