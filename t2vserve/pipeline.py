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

from t2vserve.presets import Preset, get_preset
from t2vserve.runners import OnnxRuntimeRunner, Runner, TorchRunner
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


def initial_noise(shape: tuple, seed: int) -> np.ndarray:
    # torch's CPU generator, as diffusers seeds it: the same seed gives the same video on
    # every machine, and a diffusers user can reproduce ours.
    import torch

    g = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=g, dtype=torch.float32).numpy()


def guide(noise_cond: np.ndarray, noise_uncond: np.ndarray, scale: float) -> np.ndarray:
    return noise_uncond + np.float32(scale) * (noise_cond - noise_uncond)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """(B, 3, F, H, W) in [-1, 1] -> (B, F, H, W, 3) uint8, rounding as diffusers does."""
    x = np.clip(frames / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 4, 1)
    return np.round(x * 255).astype(np.uint8)


def predict(dit: Runner, latents: np.ndarray, t: float, embeds: np.ndarray,
            guidance: float) -> np.ndarray:
    """One DiT call; the conditional and unconditional halves share one batch."""
    batch = embeds.shape[0]
    out = dit.run({
        "latents": np.repeat(latents, batch, axis=0),
        "timestep": np.full((batch,), t, dtype=np.float32),
        "prompt_embeds": embeds,
    })["noise_pred"]
    return guide(out[:1], out[1:], guidance) if batch == 2 else out


def denoise_loop(dit: Runner, latents: np.ndarray, embeds: np.ndarray, steps: int,
                 guidance: float, *, scheduler: str = "unipc", shift: float = 5.0,
                 callback=None) -> np.ndarray:
    """The flow-matching loop. `embeds` is (2, L, D) [cond, uncond] with guidance, else
    (1, L, D). `callback(i, t, latents)` runs after each step (progress, cancellation)."""
    sched = make_scheduler(scheduler, shift=shift)
    sched.set_timesteps(steps)
    for i, t in enumerate(sched.timesteps):
        noise_pred = predict(dit, latents, float(t), embeds, guidance)
        latents = sched.step(noise_pred, t, latents)
        if callback is not None:
            callback(i, t, latents)
    return latents


def decode_chunks(first: Runner, step: Runner, z: np.ndarray) -> np.ndarray:
    """Causal VAE decode, one latent frame per call, caches carried between the calls:
    (B, C, T, h, w) -> (B, 3, 4(T-1)+1, 16h, 16w) in [-1, 1]."""
    out = first.run({"latents": z[:, :, :1]})
    chunks = [out.pop("frames")]
    for i in range(1, z.shape[2]):
        feed = {name.removesuffix("_out"): value for name, value in out.items()}
        feed["latents"] = z[:, :, i:i + 1]
        out = step.run(feed)
        chunks.append(out.pop("frames"))
    return np.concatenate(chunks, axis=2)


def decode_latents(first: Runner, step: Runner, latents: np.ndarray, latents_mean: np.ndarray,
                   latents_std: np.ndarray) -> np.ndarray:
    """De-normalise as WanPipeline does (x / (1/std) + mean), then decode."""
    inv_std = (1.0 / latents_std).reshape(1, -1, 1, 1, 1)
    z = (latents / inv_std + latents_mean.reshape(1, -1, 1, 1, 1)).astype(np.float32)
    return decode_chunks(first, step, z)


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

    # 1. text
    def tokenize(self, prompts: list[str]) -> dict[str, np.ndarray]:
        return tokenize(self.tokenizer, prompts, self.preset.text_len)

    def encode(self, prompts: list[str]) -> np.ndarray:
        return self.text_encoder.run(self.tokenize(prompts))["prompt_embeds"]

    # 2-3. the denoising loop
    def denoise(self, latents: np.ndarray, embeds: np.ndarray, steps: int, guidance: float,
                callback=None) -> np.ndarray:
        return denoise_loop(self.dit, latents, embeds, steps, guidance,
                            scheduler=self.scheduler, shift=self.preset.flow_shift,
                            callback=callback)

    # 4. de-normalise and decode, one latent frame at a time
    def decode(self, latents: np.ndarray) -> np.ndarray:
        return decode_latents(self.vae_decode_first, self.vae_decode_step, latents,
                              self.latents_mean, self.latents_std)

    def generate(self, request: GenerationRequest, callback=None) -> np.ndarray:
        """One request -> uint8 frames (F, H, W, 3)."""
        do_cfg = request.guidance_scale > 1.0  # as WanPipeline: no unconditional pass at 1
        prompts = [request.prompt] + ([request.negative_prompt] if do_cfg else [])
        embeds = self.encode(prompts)
        shape = latent_shape(self.preset, request.width, request.height, request.num_frames)
        latents = initial_noise(shape, request.seed)
        latents = self.denoise(latents, embeds, request.steps, request.guidance_scale, callback)
        return to_uint8(self.decode(latents))[0]

    # construction
    @classmethod
    def from_components(cls, comps, scheduler: str = "unipc") -> "Pipeline":
        """Torch reference: the export wrappers run eagerly."""
        from t2vserve.export.vae_chunked import VaeDecodeFirst, VaeDecodeStep
        from t2vserve.export.wrappers import DiTExport, TextEncoderExport

        first, step = VaeDecodeFirst(comps.vae), VaeDecodeStep(comps.vae)
        n = first.num_caches
        caches = [f"cache_{i}" for i in range(n)]
        return cls(
            preset=comps.preset,
            tokenizer=comps.tokenizer,
            text_encoder=TorchRunner(TextEncoderExport(comps.text_encoder),
                                     ["input_ids", "attention_mask"], ["prompt_embeds"]),
            dit=TorchRunner(DiTExport(comps.transformer),
                            ["latents", "timestep", "prompt_embeds"], ["noise_pred"]),
            vae_decode_first=TorchRunner(first, ["latents"],
                                         ["frames"] + [c + "_out" for c in caches]),
            vae_decode_step=TorchRunner(step, ["latents"] + caches,
                                        ["frames"] + [c + "_out" for c in caches]),
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
