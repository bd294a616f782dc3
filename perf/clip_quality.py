"""How close a clip is to a reference clip: PSNR over the RGB frames, SSIM on luma (numpy; no
scipy or scikit-image in the environment)."""

import numpy as np


def psnr_db(clip, reference) -> float:
    """PSNR over the whole uint8 clip, in dB; inf for identical clips."""
    mse = float(np.mean((np.asarray(clip, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * np.log10(255.0 ** 2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    w = np.exp(-x ** 2 / (2 * sigma ** 2))
    return w / w.sum()


def _filter(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering over the last two axes."""
    k = len(w)
    h, wd = x.shape[-2] - k + 1, x.shape[-1] - k + 1
    y = sum(w[i] * x[..., i:i + h, :] for i in range(k))
    return sum(w[j] * y[..., :, j:j + wd] for j in range(k))


def ssim(clip, reference) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03,
    L 255) over the frames' luma (BT.601), valid region only."""
    def luma(c):
        c = np.asarray(c, np.float64)
        return 0.299 * c[..., 0] + 0.587 * c[..., 1] + 0.114 * c[..., 2]

    x, y = luma(clip), luma(reference)
    if x.shape != y.shape:
        raise ValueError(f"clips differ in shape: {x.shape} vs {y.shape}")
    w = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _filter(x, w), _filter(y, w)
    vx = _filter(x * x, w) - mx * mx
    vy = _filter(y * y, w) - my * my
    cov = _filter(x * y, w) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())
