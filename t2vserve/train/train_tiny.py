"""`make train-tiny`: weights for the `tiny` preset, trained on synthetic product clips.

1. The tiny Wan2.2 VAE as an autoencoder on the clips (64x64x9 crops, mostly around the
   product, then whole 128x128x17 clips): L1 weighted 4x on the product, L1 of 8x8-pooled
   frames (region colour), L1 of frame-to-frame differences (motion), a small KL term.
   Then its reconstructions of held-out clips are checked for colour and motion.
2. Latents of a fixed clip set; their per-channel mean/std become the VAE's latents_mean/std
   (what the pipeline de-normalises with).
3. The tiny DiT with the flow-matching objective on those normalised latents, conditioned on
   the tiny umT5, with caption dropout to "" and to the default negative prompt, so
   classifier-free guidance has a learned unconditional branch to push away from; the loss
   is weighted on the latent cells that cover the product. The umT5 stays frozen at its
   seeded random weights with its residual branches scaled down (see
   word_preserving_text_encoder_), so each word keeps its own vector.

Deterministic from --seed (one thread count, seeded data plan and noise). Writes
safetensors, the latent statistics, the loss log and a loss-curve PNG into --out.
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from t2vserve.text_corpus import WAN_DEFAULT_NEGATIVE_PROMPT
from t2vserve.train import measures, synthetic

SIZE = dict(width=128, height=128, frames=17)
DIT_OBJECT_WEIGHT = 10.0  # flow-matching loss weight on the product's latent cells
DIT_LR = 2e-3


def _render(plan, size=SIZE) -> np.ndarray:
    return np.stack([synthetic.render_clip(s.product, s.colour, s.background, s.motion,
                                           seed=s.seed, **size) for s in plan])


def _to_tensor(clips: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(clips).float().div(127.5).sub(1.0)  # (B, F, H, W, 3)
    return x.permute(0, 4, 1, 2, 3).contiguous()              # (B, 3, F, H, W)


def _clips(plan, size=SIZE) -> torch.Tensor:
    return _to_tensor(_render(plan, size))


def _object_masks(clips: np.ndarray) -> torch.Tensor:
    """(B, F, H, W) float 0/1: the product's pixels in every frame."""
    return torch.from_numpy(np.stack([[measures.object_mask(f) for f in clip]
                                      for clip in clips]).astype(np.float32))


def _weights(clips: np.ndarray, object_weight: float) -> torch.Tensor:
    """(B, 1, F, H, W) loss weights: `object_weight` on the product, 1 on the background.
    The product is ~15 % of the pixels; unweighted, L1 learns the backdrop and greys it."""
    return (1.0 + (object_weight - 1.0) * _object_masks(clips))[:, None]


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


def _lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
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
            clips = _render(plan[batch * step:batch * (step + 1)])
            f0 = int(rng.integers(0, clips.shape[1] - 9 + 1))
            lo, hi = (16, 48) if rng.random() < 0.75 else (0, 64)
            i, j = (int(v) for v in rng.integers(lo, hi + 1, 2))
            # masks need whole frames (they compare with the edges), but only the crop's 9
            w = _weights(clips[:, f0:f0 + 9], object_weight)[..., i:i + 64, j:j + 64]
            x = _to_tensor(clips)[:, :, f0:f0 + 9, i:i + 64, j:j + 64]
        else:
            k = batch * steps + step - steps
            clips = _render(plan[k:k + 1])
            x, w = _to_tensor(clips), _weights(clips, object_weight)
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps + full_steps, 1e-3)
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

    return to_uint8(vae.decode(vae.encode(_clips([sample])).latent_dist.mode()).sample.numpy())[0]


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


@torch.no_grad()
def word_preserving_text_encoder_(text_encoder, residual_scale: float = 0.05) -> None:
    """Scale the seeded random umT5's attention and FFN output projections by residual_scale.

    At full scale a random umT5 hashes the whole prompt into every position: swapping "red"
    for "blue" moves every position's vector by about its own norm, so a DiT trained on it can
    only memorise captions, and ignored the colour word. Scaled down, each position is mostly
    its own token's embedding: "red" is nearly the same vector in every caption (measured:
    0.9 apart against a norm of 5.8) and the DiT can learn what the word means.
    """
    for name, p in text_encoder.named_parameters():
        if name.endswith(("SelfAttention.o.weight", "DenseReluDense.wo.weight")):
            p.mul_(residual_scale)


def latent_cover(clips: np.ndarray, t: int, h: int, w: int) -> torch.Tensor:
    """(B, 1, t, h, w) in {0, 1}: latent cells whose pixels show the product in any of their
    frames (the VAE's first latent frame is clip frame 0, each later one the next 4)."""
    masks = _object_masks(clips)
    step = (masks.shape[1] - 1) // max(1, t - 1)
    groups = [masks[:, :1]] + [masks[:, 1 + step * i:1 + step * (i + 1)] for i in range(t - 1)]
    per_frame = torch.stack([g.amax(1) for g in groups], 1)  # (B, t, H, W)
    return torch.nn.functional.adaptive_max_pool2d(per_frame, (h, w))[:, None]


@torch.no_grad()
def encode_set(vae, plan, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (mode) of the plan's clips, and which latent cells cover the product."""
    latents, cover = [], []
    for k in range(0, len(plan), batch):
        clips = _render(plan[k:k + batch])
        z = vae.encode(_to_tensor(clips)).latent_dist.mode()
        latents.append(z)
        cover.append(latent_cover(clips, *z.shape[2:]))
    return torch.cat(latents), torch.cat(cover)


@torch.no_grad()
def embed(text_encoder, tokenizer, texts: list[str], text_len: int) -> torch.Tensor:
    from t2vserve.export.wrappers import TextEncoderExport
    from t2vserve.pipeline import tokenize

    enc = TextEncoderExport(text_encoder)
    out = []
    for k in range(0, len(texts), 32):
        t = tokenize(tokenizer, texts[k:k + 32], text_len)
        out.append(enc(torch.from_numpy(t["input_ids"]), torch.from_numpy(t["attention_mask"])))
    return torch.cat(out)


class _PaddedContext:
    """Cross-attention processor for training on prompt embeddings cut short of their zero
    padding (see compact_context): `bias` (B, 1, 1, L) goes in as the additive attention mask."""

    def __init__(self, inner):
        self.inner, self.bias = inner, None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 rotary_emb=None):
        return self.inner(attn, hidden_states, encoder_hidden_states, self.bias, rotary_emb)


def padded_context_attention(transformer) -> list[_PaddedContext]:
    """Give the DiT the export wrapper's attention with every cross-attention wrapped in a
    _PaddedContext; set their `bias` before each forward (use_export_attention undoes it)."""
    from t2vserve.export.wrappers import use_export_attention

    use_export_attention(transformer)
    procs = [_PaddedContext(b.attn2.processor) for b in transformer.blocks]
    for block, proc in zip(transformer.blocks, procs):
        block.attn2.set_processor(proc)
    return procs


def compact_context(cond: torch.Tensor, text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, text_len, D) prompt embeddings, zero past each prompt's length -> the first L
    positions (L = the longest prompt + 1) and a (B, 1, 1, L) logit bias for the DiT's
    cross-attention that gives the same attention as over all text_len positions.

    The zero rows are identical keys and values, so k of them weigh exactly like one with its
    logit raised by log k: each kept pad position gets log(pads in full / pads kept). Captions
    are at most 42 of the tiny preset's 256 positions; a training step on a batch of captions
    took 0.28 s with all 256 and 0.19 s cut short (2 threads).
    """
    n = (cond.abs().amax(-1) > 0).sum(1)  # tokens per prompt
    keep = min(text_len, int(n.max()) + 1)
    pad = torch.arange(keep)[None] >= n[:, None]
    ratio = (text_len - n).clamp_min(1).float() / (keep - n).clamp_min(1).float()
    bias = torch.where(pad, ratio.log()[:, None], torch.zeros(()))
    return cond[:, :keep], bias[:, None, None, :]


def train_dit(transformer, latents, cover, cond, uncond, steps: int, batch: int, seed: int, log,
              shift: float = 5.0, dropout: float = 0.1, uniform: float = 0.3,
              object_weight: float = DIT_OBJECT_WEIGHT, lr: float = DIT_LR) -> list[float]:
    """latents (N, C, T, h, w) normalised; cover (N, 1, T, h, w) the product's latent cells;
    cond (N, L, D) caption embeddings; uncond (2, L, D).

    The squared error is weighted `object_weight` on the product's cells: unweighted, the
    backdrop (most of the loss) is learnt first and the colour word was still ignored after
    2400 steps (its swap changed the loss by under 1 % at sigma 0.9).

    Each step computes what the served DiT computes (the export wrapper's attention), with
    two exact shortcuts: prompts cut short of their padding (compact_context), and one
    timestep per sample rather than the same one repeated for every token."""
    from t2vserve.export.wrappers import use_export_attention

    padded = padded_context_attention(transformer)
    transformer.train().requires_grad_(True)
    opt = torch.optim.AdamW(transformer.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    losses = []
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        x0, c = latents[idx], cond[idx].clone()
        w = 1.0 + (object_weight - 1.0) * cover[idx]
        drop = torch.rand(batch, generator=g) < dropout
        pick = torch.randint(0, len(uncond), (batch,), generator=g)
        c[drop] = uncond[pick[drop]]
        # noise levels mostly from the shifted schedule inference samples (high sigma, where
        # the product and its colour are decided), a fraction `uniform` uniform
        u = torch.rand(batch, generator=g)
        shifted = shift * u / (1 + (shift - 1) * u)
        sigma = torch.where(torch.rand(batch, generator=g) < uniform, u, shifted).clamp(1e-3, 1.0)
        noise = torch.randn(x0.shape, generator=g)
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        for grp in opt.param_groups:
            grp["lr"] = _lr(step, steps, lr, warmup=200)
        context, bias = compact_context(c, c.shape[1])
        for proc in padded:
            proc.bias = bias
        pred = transformer(hidden_states=xt, timestep=sigma * 1000.0,
                           encoder_hidden_states=context, return_dict=False)[0]
        # flow matching: v = noise - x0; the weights' mean is 1 over the batch
        loss = (w * (pred - (noise - x0)).pow(2)).mean() / w.mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 200 == 0 or step == steps - 1:
            log(f"dit {step + 1}/{steps} loss {np.mean(losses[-200:]):.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
    use_export_attention(transformer)
    transformer.eval().requires_grad_(False)
    return losses


def plot_losses(vae_losses, dit_losses, path: Path) -> None:
    from t2vserve.perf.report import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5), dpi=100)
    for ax, losses, title in ((axes[0], vae_losses, "VAE: weighted L1 + pooled L1 + 1e-6 KL"),
                              (axes[1], dit_losses, "DiT: flow matching MSE")):
        k = max(1, len(losses) // 100)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(losses, alpha=0.3)
        ax.plot(np.arange(len(smooth)) + k - 1, smooth)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    from safetensors.torch import save_model

    from t2vserve.presets import build_components

    p = argparse.ArgumentParser(prog="python -m t2vserve.train.train_tiny", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="build/train-tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-steps", type=int, default=1800, help="steps on 64x64x9 crops")
    p.add_argument("--vae-batch", type=int, default=4, help="crops per VAE step")
    p.add_argument("--vae-full-steps", type=int, default=150, help="whole-clip steps after")
    p.add_argument("--dit-steps", type=int, default=8000)
    p.add_argument("--dit-batch", type=int, default=8)
    p.add_argument("--dit-object-weight", type=float, default=DIT_OBJECT_WEIGHT,
                   help="DiT loss weight on the product's latent cells (1 = unweighted)")
    p.add_argument("--dit-lr", type=float, default=DIT_LR, help="DiT peak learning rate")
    p.add_argument("--clips", type=int, default=960, help="clips encoded for the DiT")
    p.add_argument("--check-clips", type=int, default=16,
                   help="held-out clips the VAE's reconstructions are checked on")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vae-from", help="reuse the VAE (weights and loss log) of an earlier run "
                   "with the same seed and VAE settings instead of training it again")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)  # same thread count, same float reductions
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "train.log", "w")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    t_start = time.perf_counter()
    comps = build_components("tiny", seed=args.seed, weights="random")
    word_preserving_text_encoder_(comps.text_encoder)
    if args.vae_from:
        # the VAE phase is deterministic: a run with the same seed, steps and threads made it
        from safetensors.torch import load_model

        load_model(comps.vae, str(Path(args.vae_from) / "vae.safetensors"), strict=True)
        vae_losses = json.loads((Path(args.vae_from) / "losses.json").read_text())["vae"]
        earlier = json.loads((Path(args.vae_from) / "summary.json").read_text())
        vae_minutes = earlier.get("vae_minutes")
        log(f"VAE from {args.vae_from} ({len(vae_losses)} steps, {vae_minutes} min there)")
    else:
        vae_losses = train_vae(comps.vae, args.vae_steps, args.seed, log, args.vae_full_steps,
                               batch=args.vae_batch)
        vae_minutes = round((time.perf_counter() - t_start) / 60, 1)
    recon = reconstruction_colours(comps.vae, args.check_clips)
    recon_hits = f"{sum(a == b for a, b in recon)}/{len(recon)}"
    log(f"VAE reconstructions keep the colour of {recon_hits} held-out clips: {recon}")
    recon_motion = reconstruction_motion(comps.vae)
    log(f"VAE reconstructions' frame-to-frame change, (product, rotating, still): {recon_motion}")

    plan = synthetic.sample_plan(args.clips, seed=args.seed + 1)
    log(f"encoding {len(plan)} clips ...")
    latents, cover = encode_set(comps.vae, plan)
    mean = latents.mean(dim=(0, 2, 3, 4))
    std = latents.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    norm = (latents - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)

    text_len = comps.preset.text_len
    # each clip with its caption in both languages: one latent, two ways to ask for it
    rng = np.random.default_rng(args.seed + 2)
    captions = [synthetic.caption(s.product, s.colour, s.background, s.motion, lang, rng)
                for s in plan for lang in ("en", "zh")]
    cond = embed(comps.text_encoder, comps.tokenizer, captions, text_len)
    uncond = embed(comps.text_encoder, comps.tokenizer, ["", WAN_DEFAULT_NEGATIVE_PROMPT], text_len)
    dit_losses = train_dit(comps.transformer, norm.repeat_interleave(2, dim=0),
                           cover.repeat_interleave(2, dim=0), cond, uncond, args.dit_steps,
                           args.dit_batch, args.seed, log, object_weight=args.dit_object_weight,
                           lr=args.dit_lr)

    # save_model: umT5 ties its embedding to `shared`, which save_file refuses
    save_model(comps.vae, str(out / "vae.safetensors"))
    save_model(comps.transformer, str(out / "transformer.safetensors"))
    save_model(comps.text_encoder, str(out / "text_encoder.safetensors"))
    stats = {"latents_mean": [round(float(v), 6) for v in mean],
             "latents_std": [round(float(v), 6) for v in std]}
    (out / "latents.json").write_text(json.dumps(stats))
    (out / "losses.json").write_text(json.dumps({"vae": vae_losses, "dit": dit_losses}))
    plot_losses(vae_losses, dit_losses, out / "losses.png")
    took = time.perf_counter() - t_start
    summary = {"seed": args.seed, "vae_from": args.vae_from, "vae_steps": args.vae_steps,
               "vae_batch": args.vae_batch,
               "vae_full_steps": args.vae_full_steps,
               "vae_reconstruction_colour_hits": recon_hits,
               "vae_reconstruction_motion": recon_motion,
               "dit_steps": args.dit_steps, "dit_batch": args.dit_batch,
               "dit_object_weight": args.dit_object_weight, "dit_lr": args.dit_lr,
               "clips": len(plan),
               "captions": len(captions), "threads": args.threads, "vae_minutes": vae_minutes,
               "minutes": round(took / 60, 1),
               "vae_final_loss": float(np.mean(vae_losses[-50:])),
               "dit_final_loss": float(np.mean(dit_losses[-200:]))}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    log(f"done in {took / 60:.1f} min: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
