"""Each shipped profile admits exactly the sizes it is built for, and validation, the TensorRT
optimisation profiles and the /dev/shm sizing agree on them (issue 20, Show 5).

Every admitted (width, height) is walked at the fewest and the most frames (and every frame
count at the largest size); every refused neighbour (one multiple off on an axis, off the grid,
the other orientation's width with this height, a frame count past the range) is refused by
validation, and wherever an engine profile could not hold it, by that profile too.
"""

import copy
from pathlib import Path

import pytest

from t2vserve.export.trt_profiles import check_request_fits, limit_corners, optimisation_profiles
from t2vserve.profile import Profile, ProfileError, limits_from, load_profile
from t2vserve.schema import GenerationRequest, RequestValidationError
from t2vserve.serve.server import SHM_DEFAULT_REGION, shm_requirement, stub_tensors

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("h100-480p", "h100-720p", "cpu-tiny")
SPATIAL = 16  # both presets' VAE stride


def _profile(name: str) -> Profile:
    return load_profile(ROOT / "profiles" / f"{name}.yaml")


def _request(profile: Profile, w: int, h: int, f: int) -> GenerationRequest:
    fields = {**profile.defaults, "width": w, "height": h, "num_frames": f}
    return GenerationRequest(prompt="a red fox in the snow", **fields)


def _frames(limits) -> list[int]:
    lo, hi = limits.num_frames
    return [f for f in range(lo, hi + 1) if (f - 1) % 4 == 0]


def _neighbours(limits) -> set[tuple[int, int]]:
    """Sizes next to an admitted one that validation must refuse."""
    admitted = set(limits.admitted_sizes())
    widths, heights = {w for w, _ in admitted}, {h for _, h in admitted}
    near = {(w, h) for w in widths for h in heights}  # 832x832 and 480x480 for 480p
    for w, h in admitted:
        mw, mh = limits.width_multiple, limits.height_multiple
        near |= {(w + mw, h), (w - mw, h), (w, h + mh), (w, h - mh), (w + 16, h), (w, h + 16)}
    return near - admitted


def _per_request(profile, w, h, f) -> int:
    return sum(size * copies for _, size, copies in stub_tensors(profile, w, h, f))


@pytest.fixture(scope="module")
def shipped():
    out = {}
    for name in NAMES:
        profile = _profile(name)
        sizes = profile.limits.sizes
        out[name] = (profile, optimisation_profiles(profile),
                     {s: optimisation_profiles(profile, size=s) for s in sizes})
    return out


@pytest.mark.parametrize("name", NAMES)
def test_every_admitted_size_passes_validation_fits_the_engines_and_the_shm_sizing(name, shipped):
    profile, envelope, per_size = shipped[name]
    limits = profile.limits
    frames = _frames(limits)
    largest = limits.largest_clip()
    need, _ = shm_requirement(profile)
    streams = profile.stream_instances()
    in_flight = int(profile.model("t2v")["instances"]) + streams  # t2v and t2v_stream
    stubs = sum(int(m["instances"]) for n, m in profile.data["models"].items()
                if n != "t2v_stream") + streams
    budget = _per_request(profile, *largest)
    assert need == budget * in_flight + stubs * SHM_DEFAULT_REGION

    walk = {(w, h, f) for w, h in limits.admitted_sizes() for f in (frames[0], frames[-1])}
    walk |= {(*largest[:2], f) for f in frames}
    assert set(limit_corners(profile)) <= walk
    for w, h, f in sorted(walk):
        _request(profile, w, h, f).validate(limits)
        check_request_fits(profile, w, h, f, profiles=envelope)
        assert _per_request(profile, w, h, f) <= budget, (w, h, f)
        if (w, h) in per_size:  # the engine profile built for this size holds it exactly
            check_request_fits(profile, w, h, f, profiles=per_size[(w, h)])
            lo, _, hi = per_size[(w, h)]["dit"]["latents"]
            assert lo[3:] == hi[3:] == (h // SPATIAL, w // SPATIAL)
    # the envelope's max is the largest admitted size on each axis, not beyond
    sizes = limits.admitted_sizes()
    _, _, hi = envelope["vae_decode_first"]["latents"]
    assert hi[3:] == (max(h for _, h in sizes) // SPATIAL, max(w for w, _ in sizes) // SPATIAL)


@pytest.mark.parametrize("name", NAMES)
def test_every_refused_neighbour_is_refused_by_validation_and_the_engines(name, shipped):
    profile, envelope, per_size = shipped[name]
    limits = profile.limits
    frames = _frames(limits)
    budget = _per_request(profile, *limits.largest_clip())
    neighbours = _neighbours(limits)
    assert neighbours
    for w, h in sorted(neighbours):
        for f in (frames[0], frames[-1]):
            with pytest.raises(RequestValidationError, match=r"^(width|height) must be"):
                _request(profile, w, h, f).validate(limits)
            for size, shapes in per_size.items():  # no per-size engine holds another size
                with pytest.raises(ValueError, match="outside the engine profile"):
                    check_request_fits(profile, w, h, f, profiles=shapes)
            env = envelope["dit"]["latents"]
            if not (env[0][3] <= h // SPATIAL <= env[2][3] and env[0][4] <= w // SPATIAL <= env[2][4]):
                with pytest.raises(ValueError, match="outside the engine profile"):
                    check_request_fits(profile, w, h, f, profiles=envelope)
            # a size bigger than every admitted one is one the shm sizing never counted
            if w * h > max(a * b for a, b in limits.admitted_sizes()):
                assert _per_request(profile, w, h, frames[-1]) > budget
    for w, h in limits.admitted_sizes()[:4]:
        for f in (frames[0] - 4, frames[-1] + 4, frames[0] + 2):
            with pytest.raises(RequestValidationError, match=r"^num_frames must be 4k\+1"):
                _request(profile, w, h, f).validate(limits)
        with pytest.raises(ValueError, match="outside the engine profile"):
            check_request_fits(profile, w, h, frames[-1] + 4, profiles=envelope)


def test_720p_admits_1280x704_and_704x1280_only(shipped):
    profile, envelope, per_size = shipped["h100-720p"]
    limits = profile.limits
    assert limits.admitted_sizes() == [(1280, 704), (704, 1280)]
    with pytest.raises(RequestValidationError) as exc:
        _request(profile, 1280, 1280, 121).validate(limits)
    assert str(exc.value) == ("height must be 704 for width 1280 (width x height one of "
                              "1280x704, 704x1280), got 1280")
    with pytest.raises(RequestValidationError, match=r"^width must be one of 704, 1280 "):
        _request(profile, 960, 704, 121).validate(limits)
    # the landscape engine profile: 44x80 latents, 5..31 latent frames, batch 1..2
    assert per_size[(1280, 704)]["dit"]["latents"] == (
        (1, 48, 5, 44, 80), (2, 48, 31, 44, 80), (2, 48, 31, 44, 80))
    assert per_size[(704, 1280)]["vae_decode_first"]["latents"][2] == (1, 48, 1, 80, 44)
    need, why = shm_requirement(profile)
    assert "1280x704x121" in why
    # what the ranges alone admitted (1280x1280) asked 1.8x the frames' shared memory
    corner = copy.deepcopy(profile.data)
    del corner["limits"]["sizes"]
    corner_need, corner_why = shm_requirement(Profile(corner, profile.path))
    assert "1280x1280x121" in corner_why and corner_need > 1.7 * need


def test_shm_counts_every_tensor_crossing_a_stub_boundary():
    profile = _profile("h100-720p")
    tensors = {what.split(" (")[0]: (size, copies)
               for what, size, copies in stub_tensors(profile, 1280, 704, 121)}
    frames = 1280 * 704 * 121 * 3
    latents = 4 * 48 * 31 * 44 * 80  # FP32 (48, 31, 44, 80)
    embeds = 4 * 2 * 512 * 4096       # FP32 prompt + negative, 512 tokens of 4096
    assert tensors["uint8 frames"] == (frames, 1)  # once, in the frame store
    assert tensors["latents, a CFG pair per step"] == (2 * latents, 2)
    assert tensors["noise_pred, a CFG pair per step"] == (2 * latents, 2)
    assert tensors["prompt_embeds"] == tensors["prompt_embeds per step"] == (embeds, 2)
    assert tensors["latents"] == (latents, 2)
    assert tensors["MP4, at most the 4:2:0 frames"] == (frames // 2, 3)
    assert tensors["prompts"] == (2 * 4096, 3)
    total = sum(s * c for s, c in tensors.values())
    assert total > frames * 2.5  # the frames and the MP4's three copies, and the rest


def test_limits_read_each_axis_multiple_and_the_sizes():
    lim = _profile("cpu-tiny").data["limits"]
    edited = copy.deepcopy(lim)
    edited["height"]["multiple"] = 64
    limits = limits_from(edited)
    assert (limits.width_multiple, limits.height_multiple) == (32, 64)
    GenerationRequest(prompt="x", width=96, height=128).validate(limits)
    with pytest.raises(RequestValidationError,
                       match=r"^height must be a multiple of 64 in \[64, 832\], got 96$"):
        GenerationRequest(prompt="x", width=128, height=96).validate(limits)
    edited["sizes"] = [[128, 64], [64, 128]]
    assert limits_from(edited).admitted_sizes() == [(128, 64), (64, 128)]
    edited["sizes"] = [[128, 96]]
    with pytest.raises(ValueError, match=r"limits.sizes: 128x96 is outside limits.width/height: "
                                         r"height must be a multiple of 64"):
        limits_from(edited)
    edited["sizes"] = [128, 64]
    with pytest.raises(ProfileError, match=r"limits.sizes must list \[width, height\] pairs"):
        limits_from(edited)
