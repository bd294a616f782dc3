import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from t2vserve.perf import roofline as rl
from t2vserve.presets import get_preset

FIVE_B = "wan2.2-ti2v-5b"


def _meta(cls, **kw):
    with torch.device("meta"):
        return cls(**kw).eval()


def _dit(preset):
    from diffusers import WanTransformer3DModel

    return _meta(WanTransformer3DModel, **get_preset(preset).dit)


def _counted(fn):
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        fn()
    return fc.get_total_flops()


def test_token_counts():
    assert rl.dit_tokens(1280, 704, 121) == 31 * 22 * 40 == 27_280
    assert rl.dit_tokens(832, 480, 73) == 19 * 15 * 26 == 7_410
    assert rl.dit_tokens(128, 128, 17, preset="tiny") == 5 * 4 * 4


@pytest.mark.parametrize("size, message", [
    ((1280, 720, 121), "width and height must be multiples of 32 for preset 'wan2.2-ti2v-5b', got 1280x720"),
    ((1296, 704, 121), "width and height must be multiples of 32 for preset 'wan2.2-ti2v-5b', got 1296x704"),
    ((1280, 704, 120), "frames must be 4k+1 (1, 5, 9, ...), got 120"),
    ((0, 704, 121), "width must be a positive int, got 0"),
    ((1280, 704.0, 121), "height must be a positive int, got 704.0"),
])
def test_bad_sizes_raise(size, message):
    with pytest.raises(ValueError) as e:
        rl.dit_tokens(*size)
    assert str(e.value) == message


def test_dit_forward_matches_the_hand_calculation():
    L, d, F, T, layers = 27_280, 3072, 14_336, 512, 30
    per_layer = (8 * L * d**2          # self-attention q, k, v, out
                 + 4 * L**2 * d        # QK^T and PV
                 + 4 * L * d**2        # cross-attention q, out
                 + 4 * T * d**2        # cross-attention k, v over the text
                 + 4 * L * T * d       # cross-attention scores and values
                 + 4 * L * d * F)      # FFN up and down
    hand = per_layer * layers
    assert hand == pytest.approx(5.17e14, rel=0.01)
    out = rl.dit_forward_flops(rl.dit_tokens(1280, 704, 121))
    assert out["total"] == pytest.approx(hand, rel=0.10)
    assert out["total"] == pytest.approx(517e12, rel=0.10)
    assert out["total"] == sum(v for k, v in out.items() if k != "total")
    assert out["self_attn_scores"] == 4 * L**2 * d * layers
    # batch is linear, text length only moves the cross-attention and text terms
    assert rl.dit_forward_flops(L, batch=2)["total"] == 2 * out["total"]
    assert rl.dit_forward_flops(L, text_len=256)["ffn"] == out["ffn"]
    assert rl.dit_forward_flops(L, text_len=256)["total"] < out["total"]


def test_dit_forward_rule_of_thumb():
    L, d, layers = 27_280, 3072, 30
    n_params = sum(p.numel() for p in _dit(FIVE_B).parameters())
    assert n_params == pytest.approx(5.0e9, rel=0.02)
    thumb = 2 * n_params * L + 4 * L**2 * d * layers
    # the thumb overcounts (cross-attention k/v weights run over 512 text tokens, not L)
    assert rl.dit_forward_flops(L)["total"] == pytest.approx(thumb, rel=0.10)


@pytest.mark.parametrize("preset", ["tiny", FIVE_B])
def test_dit_forward_equals_the_real_model_counted(preset):
    # every matmul and conv of the real forward (per-token timesteps, as the export wrapper runs it)
    from t2vserve.export.wrappers import DiTExport

    c = get_preset(preset).dit
    latents = torch.zeros(2, c["in_channels"], 3, 8, 12, device="meta")
    embeds = torch.zeros(2, 100, c["text_dim"], device="meta")
    model = DiTExport(_dit(preset))
    counted = _counted(lambda: model(latents, torch.full((2,), 500.0, device="meta"), embeds))
    assert rl.dit_forward_flops(3 * 4 * 6, preset, text_len=100, batch=2)["total"] == counted


@pytest.mark.parametrize("preset", ["tiny", FIVE_B])
def test_text_encoder_equals_the_real_model_counted(preset):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(**get_preset(preset).text_encoder)
    config._attn_implementation = "eager"
    with torch.device("meta"):
        model = UMT5EncoderModel(config).eval()
    ids = torch.zeros(1, 512, dtype=torch.long, device="meta")
    assert rl.text_encoder_flops(512, preset) == _counted(lambda: model(input_ids=ids))
    if preset == FIVE_B:
        matmul = 24 * (4 * 4096 * 4096 + 3 * 4096 * 10240)
        assert rl.text_encoder_flops(512) == 2 * matmul * 512 + 24 * 4 * 512**2 * 4096


@pytest.mark.parametrize("preset, size", [(FIVE_B, (832, 480, 33)), ("tiny", (96, 160, 13))])
def test_vae_decode_scaling_matches_a_direct_count(preset, size):
    w, h, f = size
    v = get_preset(preset).vae
    z = torch.zeros(1, v["z_dim"], (f - 1) // 4 + 1, h // 16, w // 16, device="meta")
    vae = rl._meta_vae(preset)
    assert rl.vae_decode_flops(w, h, f, preset) == _counted(lambda: vae.decode(z))


def test_vae_decode_first_frame_is_cheaper_and_frames_are_linear():
    first, step = rl._decode_first_and_step(FIVE_B, 44, 80)
    assert 0 < first < step
    a, b = (rl.vae_decode_flops(1280, 704, f) for f in (117, 121))
    assert b - a == step
    with pytest.raises(ValueError, match=r"^width and height must be multiples of 16"):
        rl.vae_decode_flops(1280, 712, 121)


def test_whole_video_arithmetic():
    e = rl.estimate_video("h100-sxm", 1280, 704, 121, 50)
    fwd = rl.dit_forward_flops(27_280)["total"]
    rate = 989e12 * 0.4
    assert e.label == "estimate (roofline, not measured)"
    assert (e.peak_tflops, e.utilisation, e.tokens, e.text_len) == (989.0, 0.4, 27_280, 512)
    assert e.flops["dit"] == 100 * fwd
    assert e.seconds["dit"] == pytest.approx(100 * fwd / rate, rel=1e-12)
    assert e.flops["text_encoder"] == 2 * rl.text_encoder_flops(512)
    assert e.flops["vae_decode"] == rl.vae_decode_flops(1280, 704, 121)
    assert e.flops["total"] == e.flops["text_encoder"] + e.flops["dit"] + e.flops["vae_decode"]
    assert e.seconds_per_video == pytest.approx(e.flops["total"] / rate, rel=1e-12)
    assert e.videos_per_gpu_hour == pytest.approx(3600 / e.seconds_per_video, rel=1e-12)
    assert 100 < e.seconds["dit"] < 200  # ~132 s
    d = json.loads(json.dumps(e.to_dict()))
    assert d["label"] == e.label and d["seconds"]["dit"] == e.seconds["dit"]
    text = rl.format_estimate(e)
    assert "estimate (roofline, not measured)" in text and "| DiT (50 steps x 2) |" in text


def test_cfg_off_and_numeric_peak():
    on = rl.estimate_video(500, 832, 480, 73, 10)
    off = rl.estimate_video(500.0, 832, 480, 73, 10, cfg=False, utilisation=1.0)
    assert on.gpu == "500 TFLOP/s" and on.peak_tflops == 500.0
    assert off.flops["dit"] * 2 == on.flops["dit"]
    assert off.flops["text_encoder"] * 2 == on.flops["text_encoder"]
    assert off.seconds["dit"] == pytest.approx(off.flops["dit"] / 500e12, rel=1e-12)


def test_bad_arguments_raise():
    with pytest.raises(ValueError) as e:
        rl.estimate_video("h100", 1280, 704, 121, 50)
    assert str(e.value) == (f"unknown gpu 'h100'; known: {sorted(rl.GPU_PEAKS)} "
                            "(or pass a peak in TFLOP/s)")
    for u in (0, -0.1, 1.01, math.nan):
        with pytest.raises(ValueError) as e:
            rl.estimate_video("a100", 1280, 704, 121, 50, utilisation=u)
        assert str(e.value) == f"utilisation must be in (0, 1], got {u!r}"
    for gpu in (0, -5, True, math.inf):
        with pytest.raises(ValueError, match="^gpu must be a name from GPU_PEAKS"):
            rl.estimate_video(gpu, 1280, 704, 121, 50)
    with pytest.raises(ValueError, match=r"^steps must be a positive int, got 0$"):
        rl.estimate_video("a100", 1280, 704, 121, 0)


def test_gpu_peaks_are_dense_datasheet_figures():
    want = {"h100-sxm": 989, "h100-pcie": 756, "h200": 989, "a100": 312, "l40s": 362,
            "l4": 121, "a10": 125, "b200": 2250}
    for name, tflops in want.items():
        assert rl.GPU_PEAKS[name].tflops == tflops
        assert "dense" in rl.GPU_PEAKS[name].note


def test_tiny_preset():
    e = rl.estimate_video("l4", 128, 128, 17, 8, preset="tiny")
    assert e.tokens == 80 and e.text_len == 256
    assert e.flops["dit"] == 16 * rl.dit_forward_flops(80, "tiny")["total"]
    assert 0 < e.seconds_per_video < 1e-2
    assert "| **total** |" in rl.format_estimate(e)


# ---- DiT forwards per video follow the sampling mode ----------------------------------------

def test_distilled_4_steps_no_cfg_is_the_base_dit_time_over_25():
    base = rl.estimate_video("h100-sxm", 1280, 704, 121, schedule=rl.DitSchedule.base(50))
    few = rl.estimate_video("h100-sxm", 1280, 704, 121, schedule=rl.DitSchedule.distilled(4))
    assert (base.dit_forwards, few.dit_forwards) == (100, 4)
    assert base.flops["dit"] == 25 * few.flops["dit"]
    assert base.seconds["dit"] == pytest.approx(25 * few.seconds["dit"], rel=1e-12)
    # no negative prompt without CFG; the VAE decodes the same clip
    assert base.flops["text_encoder"] == 2 * few.flops["text_encoder"]
    assert base.flops["vae_decode"] == few.flops["vae_decode"]
    assert (few.mode, few.steps, few.cfg) == ("distilled", 4, False)
    # the old call (steps, cfg) is the base schedule
    assert rl.estimate_video("h100-sxm", 1280, 704, 121, 50).to_dict() == base.to_dict()
    assert "| DiT (4 forwards) |" in rl.format_estimate(few)
    assert "distilled mode, 4 steps, CFG off" in rl.format_estimate(few)


def test_the_vae_share_grows_as_the_forwards_drop():
    modes = [rl.DitSchedule.base(50), rl.DitSchedule.base(50, cfg_interval=0.5),
             rl.DitSchedule.cached(50, 2.0), rl.DitSchedule.base(8),
             rl.DitSchedule.distilled(4), rl.DitSchedule.distilled(3)]
    ests = [rl.estimate_video("h100-sxm", 1280, 704, 121, schedule=m) for m in modes]
    forwards = [e.dit_forwards for e in ests]
    shares = [e.vae_share for e in ests]
    assert forwards == sorted(forwards, reverse=True) and len(set(forwards)) == len(forwards)
    assert shares == sorted(shares) and len(set(shares)) == len(shares)
    assert shares[0] < 0.05 and 0.45 < shares[-2] < shares[-1] < 0.6  # 3.7 %, 49 %, 56 %
    for e in ests:
        assert e.vae_share == e.seconds["vae_decode"] / e.seconds_per_video
        assert json.loads(json.dumps(e.to_dict()))["vae_share"] == e.vae_share


@pytest.mark.parametrize("steps", [1, 7, 8, 20, 50])
@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.9, 1.0])
def test_cfg_interval_forwards_match_the_served_loop(steps, fraction):
    # the served loop runs the unconditional pass where Sampling.cfg_at says so
    from t2vserve.sampling import Sampling

    served = Sampling(guidance_interval=(0.0, fraction))
    want = sum(2 if served.cfg_at(i, steps) else 1 for i in range(steps))
    assert rl.DitSchedule.base(steps, cfg_interval=fraction).forwards == want
    cached = rl.DitSchedule.cached(steps, 2.5, cfg_interval=fraction)
    assert cached.forwards == want / 2.5 and cached.prompts == 2


def test_given_forwards_are_used_as_they_are():
    e = rl.estimate_video(500, 832, 480, 73, schedule=rl.DitSchedule.given(37.5, 20))
    assert e.flops["dit"] == 37.5 * rl.dit_forward_flops(7_410)["total"]
    assert e.mode == "given" and "37.5 forwards" in e.forwards_basis


@pytest.mark.parametrize("make, message", [
    (lambda: rl.DitSchedule.base(50, cfg_interval=0.0), "the CFG interval must be a fraction of the steps in (0, 1], got 0.0"),
    (lambda: rl.DitSchedule.base(50, cfg_interval=1.5), "the CFG interval must be a fraction of the steps in (0, 1], got 1.5"),
    (lambda: rl.DitSchedule.base(50, cfg=False, cfg_interval=0.5), "a CFG interval needs CFG: give the interval or no CFG, not both"),
    (lambda: rl.DitSchedule.cached(50, 0.5), "cache saving must be a factor >= 1 (2 = half the DiT forwards), got 0.5"),
    (lambda: rl.DitSchedule.distilled(0), "distilled steps must be a positive int, got 0"),
    (lambda: rl.DitSchedule.given(0, 50), "DiT forwards per video must be > 0, got 0"),
    (lambda: rl.estimate_video("a100", 1280, 704, 121, 50, schedule=rl.DitSchedule.distilled()),
     "give steps (the base mode) or a schedule, not both"),
])
def test_bad_schedules_raise(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert str(e.value) == message
