"""How the synthetic clips are drawn: the five products, the turntable and the backgrounds
as signed-distance shapes, lit and composited (numpy only). `synthetic.render_clip` places
and moves them; this file says what they look like.

Shapes are drawn from signed distances in object units; coverage = clip(0.5 - d * px_per_unit)
gives one-pixel anti-aliased edges without supersampling. Every shade is a multiple of the body
colour (plus a white specular mix), so the hue of every object pixel is the named hue."""

import numpy as np

_LIGHT = np.array([-0.55, 0.45, 0.7]) / np.linalg.norm([-0.55, 0.45, 0.7])  # view space, upper left
_HALF = _LIGHT + np.array([0.0, 0.0, 1.0])
_HALF /= np.linalg.norm(_HALF)
_ELEV = 0.38  # camera looks down this many radians


# Every drawing function works on a whole clip at once: u, v are object coordinates broadcast
# to (frames, h, w) (u is (frames, 1, w), v (frames, h, 1) until they meet), per-frame values
# (rot, ppu = pixels per object unit) are (frames, 1, 1) float32. A layer is (coverage, RGB,
# shade, specular): its colour is RGB * shade mixed toward white by specular, so every object
# pixel keeps the hue of the named colour; render_clip composites layers as scalar fields.

def f32(x):
    return np.asarray(x, np.float32)


def _cov(d, ppu):
    return np.minimum(np.maximum(0.5 - d * ppu, 0.0), 1.0)


def _rbox(u, v, hx, hy, r=0.0):
    qx, qy = np.abs(u) - (hx - r), np.abs(v) - (hy - r)
    ox, oy = np.maximum(qx, 0.0), np.maximum(qy, 0.0)
    return np.sqrt(ox * ox + oy * oy) + np.minimum(np.maximum(qx, qy), 0) - r


def _ellipse(u, v, a, b):
    # first-order distance (q - 1) / |grad q|: exact enough within the pixel that matters
    a, b = np.maximum(a, f32(0.015)), np.maximum(b, f32(0.015))
    ia, ib = 1 / a, 1 / b
    ua, vb = u * ia, v * ib
    q = np.sqrt(ua * ua + vb * vb)
    g = np.sqrt(ua * ua * (ia * ia) + vb * vb * (ib * ib)) / np.maximum(q, 1e-6)
    return (q - 1) / np.minimum(np.maximum(g, 1 / np.maximum(a, b)), 1 / np.minimum(a, b))


def _edges(pts, inside):
    """Unit normals pointing away from `inside` and offsets of the lines through consecutive
    points, pts (frames, k, 2): a point's distance past line j is n_j . p - off_j."""
    e = np.roll(pts, -1, 1) - pts
    n = np.stack([e[..., 1], -e[..., 0]], -1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True) + 1e-9
    n = np.where(((inside[:, None] - pts) * n).sum(-1, keepdims=True) > 0, -n, n)
    return n, (n * pts).sum(-1)


def _poly(u, v, pts, lines=None, extra=0.0):
    """Distance to a convex polygon pts (frames, k, 2), any winding; `lines` restricts it to
    those edges, `extra` (frames,) is added (a large value hides the polygon)."""
    n, off = _edges(pts, pts.mean(1))
    off = off - np.reshape(f32(extra), (-1, 1))
    d = None
    for k in range(pts.shape[1]) if lines is None else lines:
        # u is a row and v a column: shift the small one, so one full-size add per edge
        dk = (u * n[:, k, 0, None, None] - off[:, k, None, None]) + v * n[:, k, 1, None, None]
        d = dk if d is None else np.maximum(d, dk)
    return d


def gauss(x2):
    # exp(-x2) capped before float32 exp underflows into (very slow) denormals
    return np.exp(-np.minimum(x2, 30.0))


def _rgb(col, shade):
    """A colour times a shade field (n, h, w) -> (n, 3, h, w)."""
    return f32(col).reshape(1, 3, 1, 1) * f32(shade)[:, None]


def _cylinder(s):
    """s: sine of the surface angle across a vertical cylinder -> (cosine, shade, specular),
    lit from the upper left; no arcsin, which is slow in float32."""
    s = np.clip(s, -1.0, 1.0)
    c = np.sqrt(1 - s * s)
    lam = (s * _LIGHT[0] + c * _LIGHT[2]) * (1 / np.hypot(_LIGHT[0], _LIGHT[2]))
    nh = (s * _HALF[0] + c * _HALF[2]) * (1 / np.hypot(_HALF[0], _HALF[2]))
    return c, 0.5 + 0.5 * np.maximum(lam, 0), 0.45 * gauss((1 - nh) * 120)


def _patch(s, c, lon, half):
    """Signed angular distance (radians, + outside) to a band of half-width `half` centred on
    surface longitude `lon`, seen at the surface angle whose sine/cosine are s/c."""
    cos_d = c * np.cos(lon) + s * np.sin(lon)
    return (np.cos(half) - cos_d) * (1 / np.sin(half))


def _accent(col):
    # a printed logo/label: darker for light bodies, lighter for dark ones, same hue either
    # way; on white only light grey, so that a white product never reads as a black one
    c = f32(col)
    if c.mean() > 150:
        return c * (0.72 if np.ptp(c) < 40 else 0.55)
    return c + (0.25 if c.max() < 60 else 0.45) * (255 - c)


def _cup(u, v, ppu, rot, col):
    hw, top, bot, e = 0.3, -0.4, 0.42, 0.07
    body = np.minimum(_rbox(u, v - (top + bot) / 2, hw, (bot - top) / 2), _ellipse(u, v - bot, hw, e))
    body = np.minimum(body, _ellipse(u, v - top, hw, e))
    s = u * (1 / hw)
    c, shade, spec = _cylinder(s)
    logo = np.maximum(_patch(s, c, rot - 0.35, 0.5) * (hw * c), np.abs(v - 0.02) - 0.16)
    logo = np.maximum(logo, np.abs(u) - hw)
    rim = _ellipse(u, v - top, hw * 0.86, e * 0.75)
    lh = rot + 1.25  # the handle's longitude: the right side, a little toward the camera
    sh, ch = np.sin(lh), np.cos(lh)
    hx = u - hw * sh
    ring = np.abs(_ellipse(hx, v + 0.02, 0.21 * np.abs(sh) + 0.02, f32(0.2))) - 0.035
    handle = _cov(np.maximum(ring, -hx * np.where(sh >= 0, 1, -1).astype(np.float32)), ppu)
    h_shade = 0.55 + 0.25 * np.maximum(ch, 0)
    behind = (ch < 0).astype(np.float32)  # drawn before the body when it is round the back
    return [
        (handle * behind, col, h_shade, None),
        (_cov(body, ppu), col, shade * (1 - 0.12 * np.clip(v - 0.1, 0, 1)), spec),
        (_cov(logo, ppu), _accent(col), shade, spec),
        (_cov(rim, ppu), col, 0.55 + 0.2 * np.clip((u + hw) / (2 * hw), 0, 1), None),
        (handle * (1 - behind), col, h_shade, None),
    ]


def _bottle(u, v, ppu, rot, col):
    body = _rbox(u, v - 0.17, 0.2, 0.33, 0.06)
    shoulder = _ellipse(u, v + 0.12, f32(0.2), f32(0.16))
    neck = _rbox(u, v + 0.33, 0.07, 0.1, 0.015)
    sil = np.minimum(np.minimum(body, shoulder), neck)
    cap = _rbox(u, v + 0.46, 0.085, 0.065, 0.02)
    # the local radius (body, shoulder curve, neck) drives the cylinder shading
    w = (v + 0.12) * (1 / 0.16)
    hw = np.where(v < -0.12, 0.2 * np.sqrt(np.clip(1 - w * w, 0, 1)), f32(0.2))
    s = u / np.maximum(hw, 0.07)
    c, shade, spec = _cylinder(s)
    label = np.maximum(_patch(s, c, rot + 0.2, 0.7) * (0.2 * c), np.abs(v - 0.2) - 0.21)
    back = np.maximum(_patch(s, c, rot + 0.2 + np.pi, 0.35) * (0.2 * c), np.abs(v - 0.25) - 0.12)
    label = np.minimum(label, back)  # a smaller back label, so no view is blank
    return [
        (_cov(sil, ppu), col, shade, spec),
        (_cov(np.maximum(label, sil), ppu), _accent(col), shade, spec * 0.5),
        (_cov(cap, ppu), f32(col) * 0.6, shade, None),
    ]


def _ball(u, v, ppu, rot, col):
    r, vc = 0.38, 0.5 - 0.38
    nx, ny = u * (1 / r), (vc - v) * (1 / r)
    rr = nx * nx + ny * ny
    nz = np.sqrt(np.clip(1 - rr, 0, 1))
    shade = 0.5 + 0.5 * np.maximum(nx * _LIGHT[0] + ny * _LIGHT[1] + nz * _LIGHT[2], 0)
    spec = 0.55 * gauss((1 - (nx * _HALF[0] + ny * _HALF[1] + nz * _HALF[2])) * 40)
    # seams: two great circles through world up (turning with the ball) and the equator;
    # the distance to a great circle's plane is the sine of the angle to it
    wy = ny * np.cos(_ELEV) + nz * np.sin(_ELEV)
    wz = -ny * np.sin(_ELEV) + nz * np.cos(_ELEV)
    cr, sr = np.cos(rot), np.sin(rot)
    d = np.minimum(np.minimum(np.abs(nx * cr - wz * sr), np.abs(nx * sr + wz * cr)), np.abs(wy))
    disc = (np.sqrt(rr) - 1) * r
    seam = (_accent(col), shade, None) if max(col) < 60 else (col, shade * 0.45, None)  # visible on black
    return [
        (_cov(disc, ppu), col, shade, spec),
        (_cov(np.maximum((d - 0.05) * r, disc), ppu), *seam),
    ]


# a rotating product stands on a turntable: a disc under it, in quarters alternately dark
# and light, that turns with it (the product's own turn changes little on screen)
TURNTABLE_R, _TURNTABLE_SHADES = 0.52, ((38, 38, 40), (214, 214, 210))
TURNTABLE_B = TURNTABLE_R * np.sin(_ELEV)  # its half-height on screen


def turntable(u, v, ppu, rot):
    """The turntable's layers (back to front): the disc, centred on the product's base
    (v = 0.5) and seen from the camera's elevation, and its light quarters turned by rot."""
    du, dv = u, (v - 0.5) * (TURNTABLE_R / TURNTABLE_B)
    disc = _cov(_ellipse(u, v - 0.5, f32(TURNTABLE_R), f32(TURNTABLE_B)), ppu)
    # cos 2(phi - rot) from the disc-plane direction, without an arctan
    r2 = np.maximum(du * du + dv * dv, 1e-6)
    c2, s2 = (du * du - dv * dv) / r2, 2 * du * dv / r2
    quarters = c2 * np.cos(2 * rot) + s2 * np.sin(2 * rot)
    light = np.clip(0.5 + 2.0 * quarters, 0.0, 1.0)
    dark, bright = _TURNTABLE_SHADES
    return [(disc, dark, 1.0, None), (disc * light, bright, 1.0, None)]


_BOX = np.array([[x, y, z] for x in (-0.32, 0.32) for y in (0.0, 0.62) for z in (-0.23, 0.23)], np.float32)
_BOX_BAND = _BOX * [1, 0, 1] + np.where(_BOX[:, 1:2] > 0, 0.37, 0.27).astype(np.float32) * [0, 1, 0]
_BOX_SIDES = np.array([[4, 5, 7, 6], [0, 1, 3, 2], [1, 5, 7, 3], [0, 4, 6, 2]])  # +x, -x, +z, -z
_BOX_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, 0, -1]], np.float32)


def _box(u, v, ppu, rot, col):
    th = rot[:, 0, 0] + 0.6
    c, s = np.cos(th)[:, None], np.sin(th)[:, None]
    ce, se = np.cos(_ELEV), np.sin(_ELEV)

    def screen(p):  # world (x, y up, z toward the camera) -> (frames, n, 2) object units
        x, z = p[:, 0] * c + p[:, 2] * s, -p[:, 0] * s + p[:, 2] * c
        return np.stack([x, 0.42 - (p[:, 1] * ce - z * se)], -1)

    corners, band = screen(_BOX), screen(_BOX_BAND)
    # side normals after the turn: (x, z); lit by the light's horizontal part, the top is lit
    # most, so the three visible faces always differ
    nx, nz = _BOX_NORMALS[:, 0] * c + _BOX_NORMALS[:, 2] * s, -_BOX_NORMALS[:, 0] * s + _BOX_NORMALS[:, 2] * c
    lit = 0.5 + 0.4 * np.maximum((nx * _LIGHT[0] + nz * _LIGHT[2]) / np.hypot(_LIGHT[0], _LIGHT[2]), 0)
    frames = np.arange(len(th))
    order = np.argsort(-nz, 1)[:, :2]  # the two side faces turned most toward the camera
    sil, faces = _cov(_poly(u, v, corners[:, [2, 3, 7, 6]]), ppu), []
    for j in range(2):
        f = order[:, j]
        hidden = np.where(nz[frames, f] < 0.03, 10.0, 0.0)  # edge-on
        idx = _BOX_SIDES[f]
        face = _poly(u, v, corners[frames[:, None], idx], extra=hidden)
        # the band: the face cut by the band's bottom and top edges (its lines 0 and 2)
        strip = np.maximum(face, _poly(u, v, band[frames[:, None], idx], lines=(0, 2)))
        shade = f32(lit[frames, f])[:, None, None]
        face = _cov(face, ppu)
        sil = sil + face
        faces += [(face, col, shade, None), (_cov(strip, ppu), _accent(col), shade, None)]
    # the top face, and under the side faces the whole silhouette in the top's shade: the
    # faces tile it, so their coverages add up (a union of distances would leave a seam)
    return [(np.minimum(sil, 1.0), col, 1.0, None)] + faces


def _earphones(u, v, ppu, rot, col):
    th = rot + 0.3
    c, s = np.cos(th), np.sin(th)
    se, ce = np.sin(_ELEV), np.cos(_ELEV)
    # the head band: a half ellipse in the plane of the two cups, seen from above: the image
    # of the unit circle under A = [[a, 0], [b, d]] (a sheared ellipse once it has turned)
    a = np.where(c < 0, -1, 1) * np.maximum(0.36 * np.abs(c), 0.03)
    b, d = -0.36 * s * se, f32(-0.56 * ce)
    px = u / a
    py = (v - 0.12 - b * px) / d
    q = np.sqrt(px * px + py * py)
    gu, gv = (px - py * b / d) / (a * np.maximum(q, 1e-6)), py / (d * np.maximum(q, 1e-6))
    ring = np.abs(q - 1) / np.maximum(np.sqrt(gu * gu + gv * gv), 1 / 0.56) - 0.03
    band = np.maximum(ring, -py * 0.56)  # the upper half
    band_shade = 0.6 + 0.3 * np.clip(py, 0, 1) * np.clip(0.5 - u, 0, 1)
    hw = 0.07 * np.abs(c) + 0.16 * np.abs(s)  # an ear cup seen edge-on is thin, face-on wide
    cups = []
    for near in (False, True):
        side = np.where((s > 0) == near, -1, 1).astype(np.float32)  # near: toward the camera
        x0, y0 = side * 0.36 * c, 0.24 - side * 0.36 * s * se  # nearer is lower, seen from above
        _, shade, spec = _cylinder((u - x0) / hw)
        cup = _rbox(u - x0, v - y0, hw, 0.2, np.minimum(hw, 0.12) * 0.95)
        cups.append((_cov(cup, ppu), col, shade, spec))
        if not near:  # its cushion faces inward, toward the camera once turned far enough
            pad = _rbox(u - x0, v - y0, hw * 0.6 * np.abs(s), 0.14, 0.05)
            cups.append((_cov(pad, ppu) * (np.abs(s) > 0.25), col, shade * 0.5, None))
    return cups[:2] + [(_cov(band, ppu), col, band_shade, None), cups[2]]


DRAW = {"cup": _cup, "box": _box, "bottle": _bottle, "ball": _ball, "earphones": _earphones}
SHADOW_RX = {"cup": 0.42, "box": 0.48, "bottle": 0.28, "ball": 0.36, "earphones": 0.5}
# the drawing window in object units: half-width (the shape or its shadow) and top; the
# contact shadow at v = 0.5 ends above 0.62
EXTENT = {"cup": (0.6, -0.5), "box": (0.62, -0.32), "bottle": (0.37, -0.55), "ball": (0.47, -0.28),
           "earphones": (0.65, -0.45)}


def _sin_sum(a, b):
    # sin(a + b) for a column a and a row b without a full-size sin
    return np.sin(a) * np.cos(b) + np.cos(a) * np.sin(b)


def backdrop(name, X, Y, p):
    """X (n, 1, W), Y (n, H, 1): world coordinates in frame heights (0 at the centre, Y down)
    -> float RGB (n, 3, H, W), as a per-row colour times a luminance field (one full-size
    RGB multiply; the rest works on scalar fields)."""
    tone = np.float32(p["tone"])
    if name == "wooden table":
        t = Y - p["horizon"]
        wall = (t < 0).astype(np.float32)
        row = (_rgb((92, 78, 66), (0.82 + 0.18 * np.clip(Y + 0.6, 0, 1)) * wall)
               + _rgb((158, 104, 62), 1 - wall))
        grain = (0.07 * _sin_sum(2 * np.pi * 14 * t, 0.08 * np.pi * np.sin(X * 5 + p["phase"]))
                 + 0.04 * _sin_sum(2 * np.pi * 37 * t, 0.04 * np.pi * np.sin(X * 9 - p["phase"])))
        lum = (1 - wall) * (grain - 0.25 * gauss(np.abs(t) / 0.012)) + 1
    elif name == "white studio":
        row = _rgb((243, 242, 240), np.ones_like(Y))
        lum = 0.93 + 0.05 * np.clip(Y + 0.5, 0, 1) + 0.03 * gauss(X * X / 0.15) * gauss((Y - 0.1) ** 2 / 0.15)
        tone = np.minimum(lum * tone, 254 / 243) / lum
    else:
        row = _rgb((128, 128, 130), np.ones_like(Y))
        lum = 1 - 0.08 * (X * X + Y * Y)
    return row * (lum * tone)[:, None]


def composite(crop, layers, shadow):
    """Paints layers (back to front) over crop (n, 3, h, w) float background -> uint8.
    Front to back, each layer shows through what is in front of it (transmittance `keep`);
    summing scalar weights per distinct colour leaves a single RGB pass at the end."""
    keep, white, weight, rgbs = 1.0, 0.0, {}, {}
    for a, rgb, shade, spec in reversed(layers):
        w = a * keep
        keep = keep - w
        if spec is not None:
            ws = w * spec
            white, w = white + ws, w - ws
        key = tuple(np.round(f32(rgb), 3))
        rgbs[key] = f32(rgb)
        weight[key] = weight.get(key, 0.0) + w * shade
    crop *= (keep * (1 - 0.45 * shadow))[:, None]
    crop += 255.0 * f32(white)[:, None] + 0.5 if np.ndim(white) else 0.5
    for key, w in weight.items():
        crop += rgbs[key].reshape(1, 3, 1, 1) * w[:, None]
    return np.minimum(crop, 255.0).astype(np.uint8)
