"""Phase 2 of `make train-tiny`: the tiny DiT with the flow-matching objective on the VAE's
latents, conditioned on the frozen tiny umT5, with caption dropout (to "" and to the default
negative prompt) so classifier-free guidance has an unconditional branch to push from."""

import time

import numpy as np
import torch

from t2vserve.train import synthetic
from t2vserve.train.vae import cosine_lr, object_masks, render, to_tensor

DIT_OBJECT_WEIGHT = 10.0  # flow-matching loss weight on the product's latent cells
DIT_LR = 2e-3
CAPTION_NOISE = 0.0  # fraction of DiT captions naming a wrong colour (see mistagged_colours)
PAD_WARMUP = 1000  # DiT steps over which the prompt padding's weight ramps up (ramp_pad_bias)


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
    masks = object_masks(clips)
    step = (masks.shape[1] - 1) // max(1, t - 1)
    groups = [masks[:, :1]] + [masks[:, 1 + step * i:1 + step * (i + 1)] for i in range(t - 1)]
    per_frame = torch.stack([g.amax(1) for g in groups], 1)  # (B, t, H, W)
    return torch.nn.functional.adaptive_max_pool2d(per_frame, (h, w))[:, None]


@torch.no_grad()
def encode_set(vae, plan, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (mode) of the plan's clips, and which latent cells cover the product."""
    latents, cover = [], []
    for k in range(0, len(plan), batch):
        clips = render(plan[k:k + batch])
        z = vae.encode(to_tensor(clips)).latent_dist.mode()
        latents.append(z)
        cover.append(latent_cover(clips, *z.shape[2:]))
    return torch.cat(latents), torch.cat(cover)


def mistagged_colours(plan, noise: float, seed: int) -> list[tuple[str, str]]:
    """The colour each clip's English and Chinese captions name: its own, or with probability
    `noise` (each caption on its own) one of the other seven, like a listing whose text names
    another variant. Meant to make guidance matter: with every caption right, the conditional
    branch alone follows the colour (train-tiny6: 16/16 at guidance 1.0, 14/16 at 5). Tried at
    0.35 and at 0.25 on the same VAE and 8000 steps, the DiT learnt no colour at all (every
    prompt drew the same green cup, 2/16 at both guidances), so the default is 0."""
    rng = np.random.default_rng(seed)
    others = {c: [o for o in synthetic.COLOURS if o != c] for c in synthetic.COLOURS}

    def name(colour):
        wrong = rng.random() < noise
        k = int(rng.integers(len(others[colour])))  # drawn either way: one stream per caption
        return others[colour][k] if wrong else colour

    return [(name(s.colour), name(s.colour)) for s in plan]


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


def ramp_pad_bias(bias: torch.Tensor, step: int, warmup: int) -> torch.Tensor:
    """compact_context's pad bias during the first `warmup` steps: scaled from 0 (each kept
    pad position weighs like one token) up to the full log-count (the pads weigh what the
    served DiT's all-zero tail weighs), which every later step trains on.

    Why: a caption is at most 42 of 256 positions, so at first the pads take ~90 % of every
    cross-attention and the colour word ~0.4 %; whether the DiT picks the word up early is
    then down to the seed: after 1200 of 8000 steps (train-tiny4's VAE), the colour-swap gap
    was 0.163, 0.015 and 0.042 for batch seeds 0, 1, 2; with a 1000-step ramp 0.266 and 0.054
    for seeds 0 and 1. (Seed 0 went on to follow 14/16 colours: train-tiny6.)"""
    if step >= warmup:
        return bias
    return bias * (step / warmup)


def swapped_colour_captions(plan) -> tuple[list[str], list[str]]:
    """Each sample's English caption naming its colour, and the same caption (same template)
    naming the colour three places on in COLOURS."""
    colours = list(synthetic.COLOURS)
    right, wrong = [], []
    for k, s in enumerate(plan):
        other = colours[(colours.index(s.colour) + 3) % len(colours)]
        for out, colour in ((right, s.colour), (wrong, other)):
            rng = np.random.default_rng(k)  # one template for both
            out.append(synthetic.caption(s.product, colour, s.background, s.motion, "en", rng))
    return right, wrong


@torch.no_grad()
def colour_swap_gap(transformer, latents, cover, right, wrong, sigma: float = 0.9,
                    seed: int = 0, batch: int = 16) -> float:
    """How much the DiT uses the colour word: its product-weighted flow-matching loss on
    `latents` (N, C, T, h, w, normalised) with captions naming a wrong colour (`wrong`, (N, L,
    D) embeddings over the full padded length) minus with the right one (`right`), at one
    noise level. About 0: the DiT ignores the colour word. After 1200 of 8000 steps a run at
    0.0096 ended drawing one colour for most prompts; train-tiny6, which follows 14/16, was
    at 0.163 there."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=g)
    xt = (1 - sigma) * latents + sigma * noise
    w = 1.0 + (DIT_OBJECT_WEIGHT - 1.0) * cover
    t = torch.full((len(latents),), sigma * 1000.0)

    def loss(cond):
        pred = torch.cat([transformer(hidden_states=xt[k:k + batch], timestep=t[k:k + batch],
                                      encoder_hidden_states=cond[k:k + batch], return_dict=False)[0]
                          for k in range(0, len(xt), batch)])
        return float((w * (pred - (noise - latents)).pow(2)).mean() / w.mean())

    return loss(wrong) - loss(right)


def train_dit(transformer, latents, cover, cond, uncond, steps: int, batch: int, seed: int, log,
              shift: float = 5.0, dropout: float = 0.1, uniform: float = 0.3,
              object_weight: float = DIT_OBJECT_WEIGHT, lr: float = DIT_LR,
              pad_warmup: int = PAD_WARMUP, stop: int | None = None) -> list[float]:
    """latents (N, C, T, h, w) normalised; cover (N, 1, T, h, w) the product's latent cells;
    cond (N, L, D) caption embeddings; uncond (2, L, D). pad_warmup: see ramp_pad_bias.
    stop: end after that many steps of the `steps`-step schedule (a probe of the run's start;
    None = all of it).

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
    last = steps if stop is None else min(stop, steps)
    for step in range(last):
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
            grp["lr"] = cosine_lr(step, steps, lr, warmup=200)
        context, bias = compact_context(c, c.shape[1])
        for proc in padded:
            proc.bias = ramp_pad_bias(bias, step, pad_warmup)
        pred = transformer(hidden_states=xt, timestep=sigma * 1000.0,
                           encoder_hidden_states=context, return_dict=False)[0]
        # flow matching: v = noise - x0; the weights' mean is 1 over the batch
        loss = (w * (pred - (noise - x0)).pow(2)).mean() / w.mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 200 == 0 or step == last - 1:
            log(f"dit {step + 1}/{steps} loss {np.mean(losses[-200:]):.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
    use_export_attention(transformer)
    transformer.eval().requires_grad_(False)
    return losses
