import numpy as np
import pytest

from t2vserve.media import decode_mp4, encode_mp4


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


def test_rejects_wrong_dtype():
    with pytest.raises(ValueError, match="uint8"):
        encode_mp4(np.zeros((5, 64, 64, 3), np.float32), 24)
