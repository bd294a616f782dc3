"""The text-to-video pipeline in process, over any runners (torch reference or ONNX Runtime).

The Triton models call the same stages; this file is the single definition of the math:
prompt -> umT5 embeddings -> flow-matching loop with classifier-free guidance -> latent
de-normalisation -> chunked causal VAE decode -> uint8 frames.
"""

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from t2vserve.presets import Preset, get_preset
from t2vserve.runners import (
    OnnxRuntimeRunner, Runner, TorchRunner, device_of, to_device, to_host,
)
from t2vserve.sampling import Sampling
from t2vserve.schedulers import make_scheduler
from t2vserve.schema import GenerationRequest

VAE_TEMPORAL_STRIDE = 4
VAE_SPATIAL_STRIDE = 16


def clean_prompt(text: str) -> str:
    # WanPipeline's cleaning without ftfy (an optional dependency there, absent here).
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def tokenize(tokenizer, prompts: list[str], text_len: int) -> dict[str, np.ndarray]:
    """Text-encoder inputs, padded to the model's context as WanPipeline pads them."""
    enc = tokenizer(
        [clean_prompt(p) for p in prompts], padding="max_length", max_length=text_len,
        truncation=True, add_special_tokens=True, return_attention_mask=True,
        return_tensors="np",
    )
    return {"input_ids": enc["input_ids"].astype(np.int64),
            "attention_mask": enc["attention_mask"].astype(np.int64)}


def latent_shape(preset: Preset, width: int, height: int, num_frames: int) -> tuple:
    return (
        1,
        preset.latent_channels,
        (num_frames - 1) // VAE_TEMPORAL_STRIDE + 1,
        height // VAE_SPATIAL_STRIDE,
        width // VAE_SPATIAL_STRIDE,
    )


def initial_noise(shape: tuple, seed: int) -> torch.Tensor:
    """float32 noise on the CPU: torch's CPU generator, as diffusers seeds it, so the same
    seed gives the same video on every machine and a diffusers user can reproduce ours. The
    loop moves it to the DiT's device once."""
    g = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=g, dtype=torch.float32)


def guide(noise_cond: torch.Tensor, noise_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    # float32, the scale rounded to float32 first, as diffusers' (and numpy's) float32 maths
    return noise_uncond + np.float32(scale).item() * (noise_cond - noise_uncond)


def to_uint8(frames):
    """(B, 3, F, H, W) in [-1, 1] -> (B, F, H, W, 3) uint8, rounding as diffusers does (half
    to even), on the frames' own device; a numpy array in gives a numpy array out."""
    if isinstance(frames, np.ndarray):
        return to_uint8(torch.from_numpy(frames)).numpy()
    x = torch.clamp(frames / 2 + 0.5, 0.0, 1.0).permute(0, 2, 3, 4, 1)
    return torch.round(x * 255).to(torch.uint8)


def predict(dit: Runner, latents: torch.Tensor, t: float, embeds: torch.Tensor,
            guidance: float) -> torch.Tensor:
    """One DiT call on the DiT's device; the conditional and unconditional halves share one
    batch, and the guidance combines them there."""
    batch = embeds.shape[0]
    out = dit.run({
        "latents": latents.expand(batch, *latents.shape[1:]).contiguous(),
        "timestep": torch.full((batch,), t, dtype=torch.float32, device=latents.device),
        "prompt_embeds": embeds,
    })["noise_pred"]
    return guide(out[:1], out[1:], guidance) if batch == 2 else out


def denoise_loop(dit: Runner, latents, embeds, steps: int,
                 guidance: float, *, scheduler: str = "unipc", shift: float = 5.0,
                 callback=None, sampling: Sampling | None = None, stats: dict | None = None,
                 on_prediction=None) -> torch.Tensor:
    """The flow-matching loop, on the DiT runner's device from start to end: the latents,
    the embeddings, the guidance and the scheduler's float64 maths all stay there, so a GPU
    loop moves nothing to the host between steps. `embeds` is (2, L, D) [cond, uncond] with
    guidance, else (1, L, D); `latents` the initial noise (tensor or array). Returns the
    final latents on that device.

    `sampling` (a variant's, `t2vserve.sampling`): few-step mode steps over its fixed sigmas;
    a guidance interval runs the conditional pass alone outside it; a step cache reuses the
    previous prediction, scaled by the calibrated magnitude ratio, where it judges the change
    small. `stats` (a dict) gets what was spent: DiT calls, forwards (batch rows), the
    timesteps and the steps served from the cache. `callback(i, t, latents)` runs after each
    step (progress, cancellation); `on_prediction(i, t, noise_pred)` sees each step's
    (guided) prediction (calibration)."""
    sampling = sampling or Sampling()
    sched = make_scheduler(scheduler, shift=shift, sigmas=sampling.sigmas)
    sched.set_timesteps(steps)
    device = device_of(dit)
    embeds, latents = to_device(embeds, device), to_device(latents, device)
    cache = sampling.cache.state() if sampling.cache else None
    calls = forwards = 0
    last = t_prev = None
    for i, t in enumerate(sched.timesteps):
        ratio = cache.reuse(i, steps, t_prev, float(t)) if cache is not None else None
        if ratio is not None:
            noise_pred = last * ratio
        else:
            pair = embeds if sampling.cfg_at(i, steps) else embeds[:1]
            noise_pred = to_device(predict(dit, latents, float(t), pair, guidance), device)
            calls, forwards = calls + 1, forwards + pair.shape[0]
        if on_prediction is not None:
            on_prediction(i, float(t), noise_pred)
        last, t_prev = noise_pred, float(t)
        latents = sched.step(noise_pred, t, latents)
        if callback is not None:
            callback(i, t, latents)
    if stats is not None:
        stats.update(dit_calls=calls, dit_forwards=forwards,
                     timesteps=[round(float(t), 3) for t in sched.timesteps],
                     cached_steps=list(cache.skipped) if cache is not None else [])
    return latents


def decode_chunks(first: Runner, step: Runner, z, *, uint8: bool = False) -> torch.Tensor:
    """The causal VAE decode loop, one latent frame per call, its caches carried from call to
    call as the runners' own device tensors (they never reach the host):
    (B, C, T, h, w) -> (B, 3, 4(T-1)+1, 16h, 16w) in [-1, 1], or with `uint8` each chunk made
    uint8 frames (B, F, H, W, 3) on the device as it comes out."""
    z = to_device(z, device_of(first))
    out = first.run({"latents": z[:, :, :1]})
    chunks = [out.pop("frames")]
    for i in range(1, z.shape[2]):
        if uint8:
            chunks[-1] = to_uint8(chunks[-1])
        feed = {name.removesuffix("_out"): value for name, value in out.items()}
        feed["latents"] = z[:, :, i:i + 1]
        out = step.run(feed)
        chunks.append(out.pop("frames"))
    if uint8:
        chunks[-1] = to_uint8(chunks[-1])
    return torch.cat(chunks, dim=1 if uint8 else 2)


def decode_frames(first: Runner, step: Runner, latents, latents_mean,
                  latents_std) -> torch.Tensor:
    """The VAE decode the server, the in-process pipeline and `bench gpu` all run: normalised
    latents (B, C, T, h, w) -> uint8 frames (B, F, H, W, 3) on the runners' device.

    De-normalises as WanPipeline does (x / (1/std) + mean), on the device. One sample per
    loop: ONNX Runtime's convolutions round differently with the batch size (measured:
    3e-6), and a clip must not depend on who shared its batch.
    """
    device = device_of(first)
    inv_std = (1.0 / to_device(latents_std, device).float()).reshape(1, -1, 1, 1, 1)
    mean = to_device(latents_mean, device).float().reshape(1, -1, 1, 1, 1)
    z = to_device(latents, device).float() / inv_std + mean
    return torch.cat([decode_chunks(first, step, z[i:i + 1], uint8=True)
                      for i in range(len(z))])


def vae_runners(vae, make=TorchRunner, **kwargs) -> tuple:
    """The two chunk wrappers over `vae` as (first, step) runners, with the exported graphs'
    tensor names; `make` is the runner class (TorchRunner, CudaTorchRunner), `kwargs` its
    options."""
    from t2vserve.export.vae_chunked import VaeDecodeFirst, VaeDecodeStep, cache_names

    first, step = VaeDecodeFirst(vae), VaeDecodeStep(vae)
    caches = cache_names(first.num_caches)
    outs = ["frames"] + [c + "_out" for c in caches]
    return (make(first, ["latents"], outs, **kwargs),
            make(step, ["latents"] + caches, outs, **kwargs))


@dataclass
class Pipeline:
    preset: Preset
    tokenizer: object
    text_encoder: Runner
    dit: Runner
    vae_decode_first: Runner
    vae_decode_step: Runner
    latents_mean: np.ndarray
    latents_std: np.ndarray
    scheduler: str = "unipc"
    sampling: Sampling | None = None  # a variant's (t2vserve.sampling); None = base

    # 1. text
    def tokenize(self, prompts: list[str]) -> dict[str, np.ndarray]:
        return tokenize(self.tokenizer, prompts, self.preset.text_len)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(N, L, D) embeddings on the text encoder's device."""
        device = device_of(self.text_encoder)
        tokens = {k: to_device(v, device) for k, v in self.tokenize(prompts).items()}
        return self.text_encoder.run(tokens)["prompt_embeds"]

    # 2-3. the denoising loop
    def denoise(self, latents, embeds, steps: int, guidance: float,
                callback=None, stats: dict | None = None) -> torch.Tensor:
        return denoise_loop(self.dit, latents, embeds, steps, guidance,
                            scheduler=self.scheduler, shift=self.preset.flow_shift,
                            callback=callback, sampling=self.sampling, stats=stats)

    # 4. de-normalise and decode, one latent frame at a time, on the VAE's device
    def decode(self, latents) -> torch.Tensor:
        """uint8 frames (B, F, H, W, 3) on the VAE runners' device."""
        return decode_frames(self.vae_decode_first, self.vae_decode_step, latents,
                             self.latents_mean, self.latents_std)

    def generate(self, request: GenerationRequest, callback=None,
                 stats: dict | None = None) -> np.ndarray:
        """One request -> uint8 frames (F, H, W, 3); `stats` gets what the loop spent."""
        do_cfg = request.guidance_scale > 1.0  # as WanPipeline: no unconditional pass at 1
        prompts = [request.prompt] + ([request.negative_prompt] if do_cfg else [])
        embeds = self.encode(prompts)
        shape = latent_shape(self.preset, request.width, request.height, request.num_frames)
        latents = initial_noise(shape, request.seed)
        latents = self.denoise(latents, embeds, request.steps, request.guidance_scale, callback,
                               stats)
        return to_host(self.decode(latents))[0]

    # construction
    @classmethod
    def from_components(cls, comps, scheduler: str = "unipc") -> "Pipeline":
        """Torch reference: the export wrappers run eagerly."""
        from t2vserve.export.wrappers import DiTExport, TextEncoderExport

        first, step = vae_runners(comps.vae)
        return cls(
            preset=comps.preset,
            tokenizer=comps.tokenizer,
            text_encoder=TorchRunner(TextEncoderExport(comps.text_encoder),
                                     ["input_ids", "attention_mask"], ["prompt_embeds"]),
            dit=TorchRunner(DiTExport(comps.transformer),
                            ["latents", "timestep", "prompt_embeds"], ["noise_pred"]),
            vae_decode_first=first,
            vae_decode_step=step,
            latents_mean=np.asarray(comps.vae.config.latents_mean, np.float32),
            latents_std=np.asarray(comps.vae.config.latents_std, np.float32),
            scheduler=scheduler,
        )

    @classmethod
    def from_artifacts(cls, artifacts: str | Path, scheduler: str = "unipc",
                       providers: list[str] | None = None) -> "Pipeline":
        """ONNX Runtime over what `t2vserve export` wrote."""
        from t2vserve.tokenizer import load_tokenizer

        root = Path(artifacts)
        manifest_path = root / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{manifest_path} not found: run `t2vserve export` first")
        manifest = json.loads(manifest_path.read_text())
        runner = {name: OnnxRuntimeRunner(root / f"{name}.onnx", providers=providers)
                  for name in ("text_encoder", "dit", "vae_decode_first", "vae_decode_step")}
        return cls(
            preset=get_preset(manifest["preset"]),
            tokenizer=load_tokenizer(root / "tokenizer"),
            text_encoder=runner["text_encoder"],
            dit=runner["dit"],
            vae_decode_first=runner["vae_decode_first"],
            vae_decode_step=runner["vae_decode_step"],
            latents_mean=np.asarray(manifest["latents_mean"], np.float32),
            latents_std=np.asarray(manifest["latents_std"], np.float32),
            scheduler=scheduler,
        )
