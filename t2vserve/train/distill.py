"""`make distill-tiny`: a 4-step, guidance-free student of the shipped tiny model, as a LoRA.

Teacher: the shipped tiny DiT, 50 UniPC steps with classifier-free guidance at 5.0 (100 DiT
forwards per clip), at 128x128x17. Student: the same DiT plus a rank-R LoRA on every Linear
layer, sampled by Euler over a fixed sigma list with one conditional forward per step
(4 forwards per clip, no unconditional pass):

    t_k = s_k * 1000,  x_{k+1} = x_k + (s_{k+1} - s_k) * v_student(x_k, t_k)

Method: trajectory distillation on deterministic teacher couplings (rectified-flow "reflow").
1. Pairs: N (caption, noise z) from the synthetic caption plan (both languages; the noise is
   `pipeline.initial_noise` of the plan's seed); the teacher takes each z to its endpoint x0.
   Cached in --out, keyed by everything that decides them, so a rerun skips this.
2. Line phase: at a sigma s of the student's list, x_s = (1 - s) x0 + s z and the student
   learns v = z - x0, the straight line from z to the teacher's x0. Euler on exactly these
   points lands on x0.
3. Rollout phase: x_k is where the student's own Euler steps from z get to (no gradient);
   the target is (x_k - x0) / s_k, the straight line from there to the teacher's x0, so
   the student learns to correct its own drift.

Deterministic from --seed at a fixed --threads: seeded plan, noise and batches.

    python -m t2vserve.train.distill --out build/distill-tiny [--seed 0] [--require]
"""

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils import parametrize

SIGMAS = (1.0, 0.9, 0.75, 0.5, 0.0)  # the student's Euler grid; shift-3 spacing of 4 steps
TEACHER = {"steps": 50, "scheduler": "unipc", "guidance_scale": 5.0, "width": 128,
           "height": 128, "num_frames": 17}
MIN_COLOUR_HITS = 12  # of 16, at 4 steps without guidance: what `make distill-tiny` installs
LORA_FILE = "lora.safetensors"
EVAL_SEED = 3  # evaluate.py's seed


# ---- the LoRA: W + B @ A on named Linear layers (alpha = rank, scale 1) ----

class LowRankDelta(torch.nn.Module):
    """A weight parametrization W -> W + B @ A; B starts at zero so training starts at W."""

    def __init__(self, out_features: int, in_features: int, rank: int, generator):
        super().__init__()
        bound = 1.0 / np.sqrt(in_features)  # kaiming_uniform(a=sqrt(5)), as PEFT draws A
        a = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
        self.lora_A = torch.nn.Parameter(a)
        self.lora_B = torch.nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, weight):
        return weight + self.lora_B @ self.lora_A


def lora_targets(transformer) -> list[str]:
    """Module paths of the DiT's Linear layers, the ones the LoRA adapts."""
    return [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]


def add_lora_(transformer, rank: int, seed: int) -> list[torch.nn.Parameter]:
    """Parametrize every Linear layer with a LowRankDelta; returns the trainable parameters."""
    g = torch.Generator().manual_seed(seed)
    params = []
    for name in lora_targets(transformer):
        linear = transformer.get_submodule(name)
        delta = LowRankDelta(linear.out_features, linear.in_features, rank, g)
        parametrize.register_parametrization(linear, "weight", delta)
        params += [delta.lora_A, delta.lora_B]
    return params


def lora_state_dict(transformer) -> dict[str, torch.Tensor]:
    """The diffusers/PEFT layout: transformer.<path>.lora_A.weight (r x in), .lora_B.weight."""
    out = {}
    for name in lora_targets(transformer):
        delta = transformer.get_submodule(name).parametrizations.weight[0]
        out[f"transformer.{name}.lora_A.weight"] = delta.lora_A.detach().clone().contiguous()
        out[f"transformer.{name}.lora_B.weight"] = delta.lora_B.detach().clone().contiguous()
    return out


def remove_lora_(transformer) -> None:
    """Fuse the trained deltas into the weights (W + B @ A) and drop the parametrizations."""
    for name in lora_targets(transformer):
        linear = transformer.get_submodule(name)
        if parametrize.is_parametrized(linear, "weight"):
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=True)


@torch.no_grad()
def fuse_lora_(transformer, lora: dict[str, torch.Tensor] | str | Path) -> list[str]:
    """Fuse a LoRA in the layout above into `transformer` (W += B @ A, scale 1); returns the
    module paths it changed. Keys that match no Linear layer are an error naming them."""
    if not isinstance(lora, dict):
        from safetensors.torch import load_file

        lora = load_file(str(lora))
    linears = set(lora_targets(transformer))
    paths = sorted({k.removeprefix("transformer.").rsplit(".lora_", 1)[0] for k in lora})
    unmatched = [p for p in paths if p not in linears
                 or f"transformer.{p}.lora_A.weight" not in lora
                 or f"transformer.{p}.lora_B.weight" not in lora]
    if unmatched:
        raise ValueError(f"LoRA keys match no Linear layer of the DiT (or lack lora_A/lora_B): "
                         f"{unmatched[:5]}")
    for p in paths:
        weight = transformer.get_submodule(p).weight
        weight += lora[f"transformer.{p}.lora_B.weight"] @ lora[f"transformer.{p}.lora_A.weight"]
    return paths


# ---- sampling ----

def sampling_config(sigmas=SIGMAS) -> dict:
    return {"mode": "few_step", "steps": len(sigmas) - 1, "sigmas": [float(s) for s in sigmas],
            "timesteps": [float(np.float32(s * 1000)) for s in sigmas[:-1]],
            "guidance_scale": 1.0,
            "teacher": {**TEACHER, "weights": "t2vserve/assets/tiny-weights"}}


def validate_sampling(cfg: dict) -> None:
    """Raise ValueError unless `cfg` is a few_step sampling.json this module can run."""
    s = cfg.get("sigmas", [])
    problems = [what for what, bad in (
        ("mode must be 'few_step'", cfg.get("mode") != "few_step"),
        ("steps must equal len(sigmas) - 1", cfg.get("steps") != len(s) - 1),
        ("sigmas must decrease strictly from <= 1 and end at 0.0",
         len(s) < 2 or s[-1] != 0.0 or s[0] > 1.0 or any(a <= b for a, b in zip(s, s[1:]))),
        ("timesteps must be sigmas[:-1] * 1000",
         len(cfg.get("timesteps", [])) != len(s) - 1
         or any(abs(t - 1000 * a) > 1e-3 for t, a in zip(cfg.get("timesteps", []), s))),
        ("guidance_scale must be 1.0", cfg.get("guidance_scale") != 1.0)) if bad]
    if problems:
        raise ValueError(f"invalid sampling config: {'; '.join(problems)}")


@torch.no_grad()
def few_step_loop(dit, latents: torch.Tensor, embeds: torch.Tensor, sigmas) -> torch.Tensor:
    """The student's sampler over a runner with the DiT's tensor names (latents, timestep,
    prompt_embeds -> noise_pred): one conditional forward per sigma, Euler in float64."""
    x = latents
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        t = torch.full((len(x),), s * 1000.0, dtype=torch.float32)
        v = dit.run({"latents": x, "timestep": t, "prompt_embeds": embeds})["noise_pred"]
        x = (x.double() + (s_next - s) * v.double()).float()
    return x


# ---- teacher couplings ----

def teacher_key(n: int, seed: int, weights_dir: Path) -> str:
    h = hashlib.sha256(json.dumps([n, seed, TEACHER]).encode())
    for f in sorted(weights_dir.glob("*.safetensors")):
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


@torch.no_grad()
def teacher_endpoints(transformer, procs, noise, cond, uncond, shift, log, batch: int = 16):
    """x0 of the teacher's UniPC + CFG loop from each noise (N, C, T, h, w) under cond (N, L, D)
    with the negative prompt's embedding uncond (1, L, D), `batch` clips per loop."""
    from t2vserve.pipeline import guide
    from t2vserve.schedulers import make_scheduler
    from t2vserve.train.dit import compact_context

    out, t0 = [], time.perf_counter()
    for k in range(0, len(noise), batch):
        x, c = noise[k:k + batch].clone(), cond[k:k + batch]
        b = len(x)
        context, bias = compact_context(torch.cat([c, uncond.expand(b, -1, -1)]), c.shape[1])
        for proc in procs:
            proc.bias = bias
        sched = make_scheduler(TEACHER["scheduler"], shift=shift)
        sched.set_timesteps(TEACHER["steps"])
        for t in sched.timesteps:
            pred = transformer(hidden_states=torch.cat([x, x]),
                               timestep=torch.full((2 * b,), float(t), dtype=torch.float32),
                               encoder_hidden_states=context, return_dict=False)[0]
            x = sched.step(guide(pred[:b], pred[b:], TEACHER["guidance_scale"]), t, x)
        out.append(x.float())
        done = k + b
        took = time.perf_counter() - t0
        log(f"teacher {done}/{len(noise)} clips ({took:.0f} s, ETA "
            f"{took / done * (len(noise) - done):.0f} s)")
    return torch.cat(out)


# ---- training ----

def student_rollout(transformer, x, context, sigmas, k: int):
    """Where the student's own Euler steps from noise x get to after k steps (no gradient)."""
    with torch.no_grad():
        for s, s_next in zip(sigmas[:k], sigmas[1:k + 1]):
            t = torch.full((len(x),), s * 1000.0)
            v = transformer(hidden_states=x, timestep=t, encoder_hidden_states=context,
                            return_dict=False)[0]
            x = (x.double() + (s_next - s) * v.double()).float()
    return x


def train_student(transformer, params, procs, x0, noise, cond, *, steps: int, batch: int,
                  lr: float, seed: int, rollout_from: int, sigmas=SIGMAS, log=print):
    """Adam on the LoRA parameters; steps >= rollout_from train on the student's own
    rollouts (see the module docstring). Returns the loss per step."""
    from t2vserve.train.dit import compact_context
    from t2vserve.train.vae import cosine_lr

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    grid = torch.tensor(sigmas[:-1], dtype=torch.float32)
    losses, t0 = [], time.perf_counter()
    transformer.train()
    for step in range(steps):
        idx = torch.randint(0, len(x0), (batch,), generator=g)
        k = int(torch.randint(0, len(grid), (1,), generator=g))  # one grid point per batch
        a, z = x0[idx], noise[idx]
        context, bias = compact_context(cond[idx], cond.shape[1])
        for proc in procs:
            proc.bias = bias
        s = float(grid[k])
        if step >= rollout_from and k > 0:
            x = student_rollout(transformer, z, context, sigmas, k)
        else:
            x = (1 - s) * a + s * z
        target = (x - a) / s
        for grp in opt.param_groups:
            grp["lr"] = cosine_lr(step, steps, lr, warmup=50)
        pred = transformer(hidden_states=x, timestep=torch.full((batch,), s * 1000.0),
                           encoder_hidden_states=context, return_dict=False)[0]
        loss = (pred - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            took = time.perf_counter() - t0
            phase = "rollout" if step >= rollout_from else "line"
            log(f"student {step + 1}/{steps} ({phase}) loss {np.mean(losses[-100:]):.4f} "
                f"({took:.0f} s, ETA {took / (step + 1) * (steps - step - 1):.0f} s)")
    transformer.eval()
    return losses


# ---- evaluation ----

def colour_eval(pipe, generate_latents) -> dict:
    """evaluate.py's 16 colour prompts at its seed: hits and (wanted, language, got)."""
    from t2vserve.pipeline import initial_noise, latent_shape
    from t2vserve.runners import to_host
    from t2vserve.train.evaluate import colour_hits

    shape = latent_shape(pipe.preset, TEACHER["width"], TEACHER["height"], TEACHER["num_frames"])

    def generate(prompt, guidance):
        latents = generate_latents(prompt, initial_noise(shape, EVAL_SEED))
        return to_host(pipe.decode(latents))[0]

    got = colour_hits(generate, 1.0)
    return {"colour_hits": sum(w == g for w, _, g in got), "colour": got}


def plot_losses(losses, rollout_from, path: Path) -> None:
    from t2vserve.perf.report import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    k = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
    ax.plot(losses, alpha=0.3)
    ax.plot(np.arange(len(smooth)) + k - 1, smooth)
    ax.axvline(rollout_from, color="grey", ls="--", lw=0.8)
    ax.set_title("student: velocity MSE to the teacher's x0 (line | rollout)", fontsize=9)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def model_card(summary: dict, command: str) -> str:
    s = summary
    return f"""# tiny-distilled: a 4-step, guidance-free student of the tiny preset

A LoRA (rank {s['rank']}, alpha = rank, {s['lora_layers']} Linear layers of the DiT, FP32,
{s['lora_bytes'] / 1e6:.2f} MB) on the shipped tiny DiT (`t2vserve/assets/tiny-weights`). With it
fused, the DiT draws the teacher's clips in {s['steps']} Euler steps without classifier-free
guidance: {s['steps']} DiT forwards per clip against the teacher's 100 (50 UniPC steps x 2 for CFG),
{100 // s['steps']}x fewer. Sampling (`sampling.json`): sigmas {s['sigmas']}, the DiT fed
t = 1000 s, x <- x + (s_next - s) v, guidance 1.0, noise from `pipeline.initial_noise`.

## Method
Trajectory distillation on deterministic teacher couplings (rectified-flow reflow):
{s['pairs']} (caption, noise) pairs from `synthetic.sample_plan` (seed {s['seed']} + 1; products,
colours, backgrounds, motions, English and Chinese), each noise `initial_noise` of the plan's
seed; the teacher (50 UniPC steps, CFG {TEACHER['guidance_scale']}, negative prompt the
default one, shift {s['shift']}) takes each to its endpoint x0. The student then learns the
velocity of the straight line to that x0 at its own sigmas: {s['rollout_from']} steps on the
line (1 - s) x0 + s z, then {s['steps_total'] - s['rollout_from']} steps from where its own
Euler rollout gets to (target (x_k - x0) / s_k), batch {s['batch']}, AdamW lr {s['lr']}
(cosine), gradient clip 1. A LoRA rather than a full FP16 weight set: at rank {s['rank']} on
every Linear layer it has room for the teacher's trajectories in this 3-layer DiT, it is
{s['lora_bytes'] / 1e6:.1f} MB (limit 10 MB), and the served variant goes through the same
LoRA fusion at export as any other LoRA.

## Figures (in process, torch reference, evaluate.py's 16 colour prompts, seed {EVAL_SEED})
| model | DiT forwards per clip | colour hits |
|---|---|---|
| teacher: 50 UniPC steps, CFG 5.0 | 100 | {s['teacher_colour_hits']}/16 |
| base DiT, same 4 Euler steps, no CFG | 4 | {s['base_4step_colour_hits']}/16 |
| student: 4 Euler steps, no CFG | 4 | {s['student_colour_hits']}/16 |

Mean squared distance of the student's 4-step latents to the teacher's, on the 16 prompts:
{s['student_latent_mse']:.4f} (the base DiT at the same 4 steps: {s['base_4step_latent_mse']:.4f};
latents are normalised, unit variance). Install threshold: >= {MIN_COLOUR_HITS}/16.

## Budget and determinism
{s['minutes']} min on {s['threads']} CPU threads (teacher pairs {s['teacher_minutes']} min,
cached in the output folder; training {s['train_minutes']} min; evaluation the rest).
Deterministic from --seed at the same thread count: seeded plan, noise, LoRA init and
batches; a rerun with the same arguments gives the same weights.

    {command}
"""


def main(argv=None) -> int:
    from safetensors.torch import save_file

    from t2vserve.export.wrappers import use_export_attention
    from t2vserve.pipeline import Pipeline, initial_noise, latent_shape
    from t2vserve.presets import TINY_WEIGHTS, build_components
    from t2vserve.runners import TorchRunner
    from t2vserve.schema import GenerationRequest
    from t2vserve.train import synthetic
    from t2vserve.train.dit import embed, padded_context_attention

    p = argparse.ArgumentParser(prog="python -m t2vserve.train.distill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="build/distill-tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs", type=int, default=256, help="teacher (caption, noise) pairs")
    p.add_argument("--steps", type=int, default=600, help="student training steps")
    p.add_argument("--rollout-from", type=int, default=400,
                   help="step from which the student trains on its own rollouts")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--require", action="store_true",
                   help=f"exit 1 unless the student reaches {MIN_COLOUR_HITS}/16 colour hits")
    args = p.parse_args(argv)
    if not 0 <= args.rollout_from <= args.steps:
        p.error(f"--rollout-from must be in [0, --steps = {args.steps}], got {args.rollout_from}")

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)  # same thread count, same float reductions
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "distill.log", "w")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    t_start = time.perf_counter()
    comps = build_components("tiny")
    preset, text_len = comps.preset, comps.preset.text_len
    shape = latent_shape(preset, TEACHER["width"], TEACHER["height"], TEACHER["num_frames"])
    uncond = embed(comps.text_encoder, comps.tokenizer,
                   [GenerationRequest(prompt="x").negative_prompt], text_len)

    # 1. teacher couplings (cached)
    plan = synthetic.sample_plan(args.pairs, seed=args.seed + 1)
    cond = embed(comps.text_encoder, comps.tokenizer, [s.caption for s in plan], text_len)
    noise = torch.cat([initial_noise(shape, s.seed) for s in plan])
    cache = out / f"teacher-{teacher_key(args.pairs, args.seed, TINY_WEIGHTS)}.pt"
    if cache.exists():
        x0 = torch.load(cache)
        log(f"teacher pairs from {cache}")
    else:
        procs = padded_context_attention(comps.transformer)
        x0 = teacher_endpoints(comps.transformer, procs, noise, cond, uncond,
                               preset.flow_shift, log)
        use_export_attention(comps.transformer)
        torch.save(x0, cache)
    teacher_minutes = round((time.perf_counter() - t_start) / 60, 1)

    # 2-3. the student
    import copy

    student = copy.deepcopy(comps.transformer).requires_grad_(False)
    params = add_lora_(student, args.rank, args.seed + 4)
    procs = padded_context_attention(student)
    t_train = time.perf_counter()
    losses = train_student(student, params, procs, x0, noise, cond, steps=args.steps,
                           batch=args.batch, lr=args.lr, seed=args.seed + 5,
                           rollout_from=args.rollout_from, log=log)
    train_minutes = round((time.perf_counter() - t_train) / 60, 1)
    use_export_attention(student)
    lora = lora_state_dict(student)
    save_file(lora, str(out / LORA_FILE))
    remove_lora_(student)
    student.requires_grad_(False)
    cfg = sampling_config()
    (out / "sampling.json").write_text(json.dumps(cfg, indent=1))
    (out / "losses.json").write_text(json.dumps(losses))
    plot_losses(losses, args.rollout_from, out / "losses.png")

    # 4. evaluation: teacher, the base DiT at 4 steps, the student at 4 steps
    from t2vserve.export.wrappers import DiTExport

    log("evaluating (16 colour prompts: teacher at 50 steps, base and student at 4) ...")
    pipe = Pipeline.from_components(comps)
    student_dit = TorchRunner(DiTExport(student), ["latents", "timestep", "prompt_embeds"],
                              ["noise_pred"])
    teacher_latents = {}

    def teacher(prompt, z):
        embeds = pipe.encode([prompt, GenerationRequest(prompt="x").negative_prompt])
        teacher_latents[prompt] = pipe.denoise(z, embeds, TEACHER["steps"],
                                               TEACHER["guidance_scale"])
        return teacher_latents[prompt]

    def few_step(dit, mse):
        def generate(prompt, z):
            x = few_step_loop(dit, z, pipe.encode([prompt]), cfg["sigmas"])
            mse.append(float((x - teacher_latents[prompt]).pow(2).mean()))
            return x
        return generate

    base_mse, student_mse = [], []
    teacher_eval = colour_eval(pipe, teacher)
    base_eval = colour_eval(pipe, few_step(pipe.dit, base_mse))
    student_eval = colour_eval(pipe, few_step(student_dit, student_mse))
    result = {
        "student": {"steps": cfg["steps"], "guidance_scale": 1.0, "dit_forwards": cfg["steps"],
                    "sigmas": cfg["sigmas"], **student_eval},
        "teacher": {"steps": TEACHER["steps"], "guidance_scale": TEACHER["guidance_scale"],
                    "dit_forwards": 2 * TEACHER["steps"], **teacher_eval},
        "base_4step": {"steps": cfg["steps"], "guidance_scale": 1.0, **base_eval},
        "student_latent_mse": round(float(np.mean(student_mse)), 5),
        "base_4step_latent_mse": round(float(np.mean(base_mse)), 5),
        "seed": EVAL_SEED,
    }
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    took = time.perf_counter() - t_start
    summary = {"seed": args.seed, "pairs": args.pairs, "steps_total": args.steps,
               "rollout_from": args.rollout_from, "batch": args.batch, "rank": args.rank,
               "lr": args.lr, "threads": args.threads, "shift": preset.flow_shift,
               "lora_layers": len(lora) // 2, "lora_bytes": (out / LORA_FILE).stat().st_size,
               "steps": cfg["steps"], "sigmas": cfg["sigmas"],
               "teacher_colour_hits": teacher_eval["colour_hits"],
               "base_4step_colour_hits": base_eval["colour_hits"],
               "student_colour_hits": student_eval["colour_hits"],
               "student_latent_mse": result["student_latent_mse"],
               "base_4step_latent_mse": result["base_4step_latent_mse"],
               "final_loss": float(np.mean(losses[-100:])), "teacher_minutes": teacher_minutes,
               "train_minutes": train_minutes, "minutes": round(took / 60, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    command = "python -m t2vserve.train.distill " + " ".join(
        [f"--seed {args.seed}", f"--pairs {args.pairs}", f"--steps {args.steps}",
         f"--rollout-from {args.rollout_from}", f"--batch {args.batch}", f"--rank {args.rank}",
         f"--lr {args.lr}", f"--threads {args.threads}"])
    (out / "MODEL_CARD.md").write_text(model_card(summary, command))
    log(f"colour hits at 4 steps, no CFG: student {student_eval['colour_hits']}/16, base DiT "
        f"{base_eval['colour_hits']}/16; teacher (50 steps, CFG 5): "
        f"{teacher_eval['colour_hits']}/16; latent MSE to the teacher: student "
        f"{result['student_latent_mse']}, base {result['base_4step_latent_mse']}")
    log(f"student misses (wanted, language, got): "
        f"{[c for c in student_eval['colour'] if c[0] != c[2]]}")
    log(f"done in {took / 60:.1f} min: {json.dumps(summary)}")
    if args.require and student_eval["colour_hits"] < MIN_COLOUR_HITS:
        log(f"not good enough to install: student colour hits {student_eval['colour_hits']}/16 "
            f"< {MIN_COLOUR_HITS}/16 at 4 steps without guidance")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
