"""`make train-tiny`: weights for the `tiny` preset, trained on synthetic product clips.

1. The tiny Wan2.2 VAE as an autoencoder on the clips (64x64x9 crops, mostly around the
   product, then whole 128x128x17 clips): L1 weighted 4x on the product, L1 of 8x8-pooled
   frames (region colour), L1 of frame-to-frame differences (motion), a small KL term. Then
   its reconstructions of held-out clips are checked for colour and motion.
   (t2vserve/train/vae.py)
2. Latents of a fixed clip set; their per-channel mean/std become the VAE's latents_mean/std
   (what the pipeline de-normalises with).
3. The tiny DiT with the flow-matching objective on those normalised latents, conditioned on
   the tiny umT5, with caption dropout to "" and to the default negative prompt, so
   classifier-free guidance has a learned unconditional branch to push away from
   (--caption-noise makes some captions name a wrong colour; off by default). The loss is
   weighted on the latent cells that cover the product. The umT5 stays frozen at its seeded
   random weights with its residual branches scaled down (see word_preserving_text_encoder_),
   so each word keeps its own vector. Its colour-swap gap (the loss with a wrong colour named
   minus with the right one) says whether it uses the colour word. (t2vserve/train/dit.py)

Deterministic from --seed (one thread count, seeded data plan and noise); --dit-seed draws
the DiT's batches and noise from another seed, to tell a recipe from a lucky draw. Writes
safetensors, the latent statistics, the loss log and a loss-curve PNG into --out.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from t2vserve.text_corpus import WAN_DEFAULT_NEGATIVE_PROMPT
from t2vserve.train import synthetic
from t2vserve.train.dit import (CAPTION_NOISE, DIT_LR, DIT_OBJECT_WEIGHT, PAD_WARMUP,
                                colour_swap_gap, embed, encode_set, mistagged_colours,
                                swapped_colour_captions, train_dit, word_preserving_text_encoder_)
from t2vserve.train.vae import reconstruction_colours, reconstruction_motion, train_vae


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
    p.add_argument("--caption-noise", type=float, default=CAPTION_NOISE,
                   help="fraction of captions that name a wrong colour, in [0, 1)")
    p.add_argument("--pad-warmup", type=int, default=PAD_WARMUP,
                   help="DiT steps over which the prompt padding's attention weight ramps up to "
                   "the served one (0 = served weight from the first step)")
    p.add_argument("--dit-stop", type=int,
                   help="end the DiT after this many steps of its --dit-steps schedule: a "
                   "probe of a recipe's start (it logs the colour-swap gap there); the weights "
                   "are then not for use")
    p.add_argument("--dit-seed", type=int,
                   help="seed of the DiT's batches, caption dropout and noise (default: --seed)")
    p.add_argument("--clips", type=int, default=960, help="clips encoded for the DiT")
    p.add_argument("--check-clips", type=int, default=16,
                   help="held-out clips the VAE's reconstructions are checked on")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vae-from", help="reuse the VAE (weights and loss log) of an earlier run "
                   "with the same seed and VAE settings instead of training it again")
    args = p.parse_args(argv)
    if not 0.0 <= args.caption_noise < 1.0:
        p.error(f"--caption-noise must be in [0, 1), got {args.caption_noise}")
    if args.pad_warmup < 0:
        p.error(f"--pad-warmup must be >= 0, got {args.pad_warmup}")
    if args.dit_stop is not None and not 1 <= args.dit_stop <= args.dit_steps:
        p.error(f"--dit-stop must be in [1, --dit-steps = {args.dit_steps}], got {args.dit_stop}")
    dit_seed = args.seed if args.dit_seed is None else args.dit_seed

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
    named = mistagged_colours(plan, args.caption_noise, args.seed + 3)
    captions = [synthetic.caption(s.product, c, s.background, s.motion, lang, rng)
                for s, pair in zip(plan, named) for c, lang in zip(pair, ("en", "zh"))]
    cond = embed(comps.text_encoder, comps.tokenizer, captions, text_len)
    uncond = embed(comps.text_encoder, comps.tokenizer, ["", WAN_DEFAULT_NEGATIVE_PROMPT], text_len)
    dit_losses = train_dit(comps.transformer, norm.repeat_interleave(2, dim=0),
                           cover.repeat_interleave(2, dim=0), cond, uncond, args.dit_steps,
                           args.dit_batch, dit_seed, log, object_weight=args.dit_object_weight,
                           lr=args.dit_lr, pad_warmup=args.pad_warmup, stop=args.dit_stop)
    right, wrong = swapped_colour_captions(plan[:48])
    gap = colour_swap_gap(comps.transformer, norm[:48], cover[:48],
                          embed(comps.text_encoder, comps.tokenizer, right, text_len),
                          embed(comps.text_encoder, comps.tokenizer, wrong, text_len))
    log(f"DiT colour-swap gap at sigma 0.9: {gap:.4f} (loss with a wrong colour named minus the "
        "right one; about 0 = the colour word is ignored)")

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
               "vae_batch": args.vae_batch, "vae_full_steps": args.vae_full_steps,
               "vae_reconstruction_colour_hits": recon_hits,
               "vae_reconstruction_motion": recon_motion,
               "dit_steps": args.dit_steps, "dit_batch": args.dit_batch,
               "dit_object_weight": args.dit_object_weight, "dit_lr": args.dit_lr,
               "caption_noise": args.caption_noise, "pad_warmup": args.pad_warmup,
               "dit_seed": dit_seed, "dit_stop": args.dit_stop, "dit_colour_gap": round(gap, 4),
               "clips": len(plan), "captions": len(captions), "threads": args.threads,
               "vae_minutes": vae_minutes, "minutes": round(took / 60, 1),
               "vae_final_loss": float(np.mean(vae_losses[-50:])),
               "dit_final_loss": float(np.mean(dit_losses[-200:]))}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    log(f"done in {took / 60:.1f} min: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
