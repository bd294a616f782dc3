"""Phase 1 of `make train-tiny`: the tiny Wan2.2 VAE as an autoencoder on synthetic clips,
and checks of what its reconstructions keep (colour, motion). Also the clip helpers both
phases use (rendering a plan, tensors, product masks) and the learning-rate schedule."""

import math
import time

import numpy as np
import torch

from t2vserve.train import measures, synthetic

SIZE = dict(width=128, height=128, frames=17)


def render(plan, size=SIZE) -> np.ndarray:
    return np.stack([synthetic.render_clip(s.product, s.colour, s.background, s.motion,
                                           seed=s.seed, **size) for s in plan])


def to_tensor(clips: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(clips).float().div(127.5).sub(1.0)  # (B, F, H, W, 3)
    return x.permute(0, 4, 1, 2, 3).contiguous()              # (B, 3, F, H, W)


def clips_tensor(plan, size=SIZE) -> torch.Tensor:
    return to_tensor(render(plan, size))


def object_masks(clips: np.ndarray) -> torch.Tensor:
    """(B, F, H, W) float 0/1: the product's pixels in every frame."""
    return torch.from_numpy(np.stack([[measures.object_mask(f) for f in clip]
                                      for clip in clips]).astype(np.float32))


def _weights(clips: np.ndarray, object_weight: float) -> torch.Tensor:
    """(B, 1, F, H, W) loss weights: `object_weight` on the product, 1 on the background.
    The product is ~15 % of the pixels; unweighted, L1 learns the backdrop and greys it."""
    return (1.0 + (object_weight - 1.0) * object_masks(clips))[:, None]


def _vae_loss(recon, x, w) -> torch.Tensor:
    """Object-weighted L1, plus L1 of 8x8-pooled frames (the colour of each region), plus
    object-weighted L1 of the frame-to-frame differences (motion, and no flicker: without it
    the reconstruction of a still clip changed by 0.009 per frame, more than a rotating cup's
    0.002, so no DiT trained on its latents could tell "rotating" from "still")."""
    pool = lambda t: torch.nn.functional.avg_pool3d(t, (1, 8, 8))  # noqa: E731
    dt = lambda t: t[:, :, 1:] - t[:, :, :-1]  # noqa: E731
    wt = w[:, :, 1:]
    return ((w * (recon - x).abs()).sum() / w.sum() / 3 + (pool(recon) - pool(x)).abs().mean()
            + (wt * (dt(recon) - dt(x)).abs()).sum() / wt.sum() / 3)


def cosine_lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_vae(vae, steps: int, seed: int, log, full_steps: int, batch: int = 4,
              object_weight: float = 4.0) -> list[float]:
    """`steps` steps on `batch` 64x64x9 crops (three in four centred near the product), then
    `full_steps` on whole clips; one fresh clip per sample throughout."""
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    plan = synthetic.sample_plan(steps * batch + full_steps, seed=seed)
    losses = []
    t0 = time.perf_counter()
    for step in range(steps + full_steps):
        if step < steps:
            part = plan[batch * step:batch * (step + 1)]
            clips = render(part)
            f0 = int(rng.integers(0, clips.shape[1] - 9 + 1))
            lo, hi = (16, 48) if rng.random() < 0.75 else (0, 64)
            i, j = (int(v) for v in rng.integers(lo, hi + 1, 2))
            # masks need whole frames (they compare with the edges), but only the crop's 9
            w = _weights(clips[:, f0:f0 + 9], object_weight)[..., i:i + 64, j:j + 64]
            x = to_tensor(clips)[:, :, f0:f0 + 9, i:i + 64, j:j + 64]
        else:
            k = batch * steps + step - steps
            part = plan[k:k + 1]
            clips = render(part)
            x, w = to_tensor(clips), _weights(clips, object_weight)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps + full_steps, 1e-3)
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample(generator=torch.Generator().manual_seed(seed + step))).sample
        loss = _vae_loss(recon, x, w) + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps + full_steps - 1:
            log(f"vae {step + 1}/{steps + full_steps} loss {np.mean(losses[-50:]):.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
    vae.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def _reconstruct(vae, sample) -> np.ndarray:
    """uint8 frames (F, H, W, 3) of the VAE's reconstruction of one sample's clip."""
    from t2vserve.pipeline import to_uint8

    return to_uint8(vae.decode(vae.encode(clips_tensor([sample])).latent_dist.mode()).sample.numpy())[0]


@torch.no_grad()
def reconstruction_colours(vae, n: int = 16, seed: int = 10_000) -> list[tuple[str, str]]:
    """(colour, dominant colour of the VAE's reconstruction) for n held-out clips: what the
    decoder can draw at all, whatever the DiT does."""
    return [(s.colour, measures.dominant_hue(_reconstruct(vae, s))[0])
            for s in synthetic.sample_plan(n, seed=seed)]


@torch.no_grad()
def reconstruction_motion(vae, seed: int = 10_000) -> list[tuple[str, float, float]]:
    """(product, rotating, still) frame-to-frame change of the VAE's reconstructions of a red
    product on a wooden table: rotating must come back moving more than still."""
    def energy(product, motion, seed):
        sample = synthetic.Sample(product, "red", "wooden table", motion, "en", "", seed)
        return round(measures.motion_energy(_reconstruct(vae, sample)), 5)

    return [(product, energy(product, "rotating", seed + k), energy(product, "still", seed + k))
            for k, product in enumerate(("cup", "box", "bottle", "ball"))]
