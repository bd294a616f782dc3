import numpy as np
import pytest

from t2vserve.media import X264_ASM_WITHOUT_AVX512, decode_mp4, encode_mp4, host_x264_asm, x264_asm
from t2vserve.perf.bench_encoder import noisy_clip


def _frames(n=17, h=64, w=96, seed=0):
    # a smooth moving gradient, like a product clip (noise is H.264's worst case)
    y, x = np.mgrid[0:h, 0:w]
    t = np.arange(n).reshape(n, 1, 1)
    r = 128 + 100 * np.sin((x + 3 * t + seed * 11) / 9.0)
    g = 128 + 100 * np.cos((y - 2 * t) / 7.0)
    b = np.broadcast_to(40.0 + seed * 50 + 0 * t, r.shape)
    return np.stack([r, g, b], -1).astype(np.uint8)


def test_mp4_round_trip_keeps_count_size_fps_and_content():
    frames = _frames()
    data = encode_mp4(frames, fps=24)
    decoded, fps = decode_mp4(data)
    assert decoded.shape == frames.shape and fps == 24.0
    err = np.abs(decoded.astype(int) - frames.astype(int)).mean()
    assert err < 6  # lossy (crf 18, 4:2:0 chroma), but the same picture


def test_same_frames_give_the_same_bytes():
    frames = _frames()
    assert encode_mp4(frames, 24) == encode_mp4(frames, 24)
    assert encode_mp4(frames, 24) != encode_mp4(_frames(seed=1), 24)
    # many runs in one process: x264's AVX-512 code gave 3-8 encodings in 40 on an AVX-512
    # host (noise-like random-weight clips, not every time); one is allowed
    noisy = noisy_clip()
    assert len({encode_mp4(noisy, 24) for _ in range(20)}) == 1


def test_x264_avx512_is_capped_only_on_avx512_cpus():
    assert x264_asm({"sse4_2", "avx", "avx2", "fma", "bmi2", "avx512f", "avx512bw"}) == \
        X264_ASM_WITHOUT_AVX512
    assert x264_asm({"sse4_2", "avx", "avx2", "fma", "bmi2"}) is None  # e.g. AMD Zen 2/3
    assert x264_asm({"fp", "asimd", "sve"}) is None  # aarch64 (Grace): x264's own detection


def test_x264_runs_no_avx512_code_and_keeps_avx2():
    import av.logging

    level = av.logging.get_level()
    av.logging.set_level(av.logging.INFO)  # x264 reports its CPU capabilities at INFO
    try:
        with av.logging.Capture() as logs:
            encode_mp4(_frames(n=5), 24)
    finally:
        av.logging.set_level(level)
    caps = [msg for _, name, msg in logs if name == "libx264" and "cpu capabilities" in msg]
    assert len(caps) == 1, logs
    assert "AVX512" not in caps[0].split()
    if host_x264_asm():  # an AVX-512 host: only AVX-512 is taken away
        assert "AVX2" in caps[0].split()


def test_rejects_wrong_dtype():
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(np.zeros((5, 64, 64, 3), np.float32), 24)
