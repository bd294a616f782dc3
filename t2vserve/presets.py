"""Model presets: the real diffusers/transformers classes at two sizes.

`tiny` keeps every structural feature of Wan2.2-TI2V-5B (patch (1,2,2), 48 latent channels,
per-token timesteps, rms_norm_across_heads, text cross-attention, residual VAE with stride
(4,16,16) and patch 2) at a size that runs on a laptop CPU. `wan2.2-ti2v-5b` is the published
config; it loads a local diffusers-format checkpoint, or builds random / meta weights.
"""

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Published Wan2.2-TI2V-5B-Diffusers configs (transformer/, vae/, text_encoder/).
WAN22_5B_DIT = dict(
    patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48,
    out_channels=48, text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None,
    added_kv_proj_dim=None, rope_max_seq_len=1024, pos_embed_seq_len=None,
)
WAN22_LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]
WAN22_LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]
WAN22_5B_VAE = dict(
    base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
    attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0,
    latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD, is_residual=True,
    in_channels=12, out_channels=12, patch_size=2, scale_factor_temporal=4,
    scale_factor_spatial=16,
)
UMT5_XXL = dict(
    vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_decoder_layers=24,
    num_heads=64, relative_attention_num_buckets=32, relative_attention_max_distance=128,
    dropout_rate=0.1, layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu",
    tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)

TINY_DIT = dict(
    WAN22_5B_DIT, num_attention_heads=4, attention_head_dim=64, text_dim=32, freq_dim=64,
    ffn_dim=512, num_layers=3,
)
TINY_VAE = dict(
    WAN22_5B_VAE, base_dim=8, decoder_base_dim=16, num_res_blocks=1,
    # seeded stand-ins for the statistics, so de-normalisation is exercised
    latents_mean=[round(0.1 * ((i * 7) % 11 - 5) / 5, 4) for i in range(48)],
    latents_std=[round(0.5 + ((i * 5) % 13) / 13, 4) for i in range(48)],
)
TINY_UMT5 = dict(
    UMT5_XXL, vocab_size=1024, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
    num_heads=4, dropout_rate=0.0,
)


@dataclass(frozen=True)
class Preset:
    name: str
    dit: dict
    vae: dict
    text_encoder: dict
    text_len: int  # prompts are padded to this many tokens, as WanPipeline does
    flow_shift: float = 5.0
    defaults: dict = field(default_factory=dict)

    @property
    def latent_channels(self) -> int:
        return self.dit["in_channels"]


PRESETS = {
    "tiny": Preset(
        "tiny", TINY_DIT, TINY_VAE, TINY_UMT5, text_len=256,
        defaults=dict(width=128, height=128, num_frames=17, fps=24, steps=8, guidance_scale=5.0),
    ),
    "wan2.2-ti2v-5b": Preset(
        "wan2.2-ti2v-5b", WAN22_5B_DIT, WAN22_5B_VAE, UMT5_XXL, text_len=512,
        defaults=dict(width=1280, height=704, num_frames=121, fps=24, steps=50, guidance_scale=5.0),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


@dataclass
class Components:
    preset: Preset
    text_encoder: torch.nn.Module
    transformer: torch.nn.Module
    vae: torch.nn.Module
    tokenizer: object | None


def _random_init_(module: torch.nn.Module, seed: int) -> None:
    # Default inits leave zero-initialised projections (e.g. Wan's proj_out), which would
    # make a random DiT output exactly zero; give every parameter seeded small noise.
    # Drawn on the module's device: a CPU generator takes minutes for the 5B DiT and
    # umT5-XXL, and would stage every FP32 draw in host memory (CPU draws are unchanged).
    device = next(module.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            if p.ndim == 1 and ("norm" in name or name.endswith(".gamma")):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g, device=device))
            else:
                fan_in = p[0].numel() if p.ndim > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=g, device=device) / max(fan_in, 1) ** 0.5)


# Trained weights for `tiny` (`make train-tiny`), used by default once they are shipped.
TINY_WEIGHTS = Path(__file__).parent / "assets" / "tiny-weights"
WEIGHTS = ("default", "random")


def trained_tiny_available(weights_dir: str | Path = TINY_WEIGHTS) -> bool:
    return (Path(weights_dir) / "transformer.safetensors").exists()


# The three networks, in the order their random weights are seeded (seed, seed+1, seed+2).
NETWORKS = ("text_encoder", "transformer", "vae")


@contextmanager
def _default_dtype(dtype: torch.dtype):
    # parameters are created in the target dtype, not in FP32 and then cast
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_component(
    preset: str | Preset,
    network: str,
    *,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    weights: str = "default",
    weights_dir: str | Path = TINY_WEIGHTS,
) -> torch.nn.Module:
    """Build one of the preset's networks ("text_encoder", "transformer" or "vae"), in eval
    mode, straight in `dtype` on `device`: a stage process holds its own network and nothing
    else, and a 5B model never passes through an FP32 copy in host memory.

    Same weights as `build_components` gives that network (arguments as there). A checkpoint
    needs only this network's subfolder; it is loaded with `device_map` (accelerate), so the
    tensors go from the file to the device in `dtype`.
    """
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    preset = get_preset(preset) if isinstance(preset, str) else preset
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {NETWORKS}, got {network!r}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    meta = str(device) == "meta"
    if checkpoint is not None:
        folder = Path(checkpoint) / network
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{checkpoint} is not a diffusers checkpoint: missing "
                                    f"{network}/config.json")
        placed = {} if meta else {"device_map": str(torch.device(device))}
        if network == "text_encoder":
            module = UMT5EncoderModel.from_pretrained(
                folder, attn_implementation="eager", dtype=dtype, local_files_only=True, **placed)
        else:
            cls = WanTransformer3DModel if network == "transformer" else AutoencoderKLWan
            module = cls.from_pretrained(folder, torch_dtype=dtype, local_files_only=True,
                                         low_cpu_mem_usage=True, **placed)
    else:
        trained = (weights == "default" and preset.name == "tiny" and not meta
                   and trained_tiny_available(weights_dir))
        with torch.device(device), _default_dtype(dtype):
            if network == "transformer":
                module = WanTransformer3DModel(**preset.dit)
            elif network == "vae":
                vae_config = preset.vae
                if trained:  # the statistics of the trained VAE's latents, not the stand-ins
                    vae_config = {**preset.vae,
                                  **json.loads((Path(weights_dir) / "latents.json").read_text())}
                module = AutoencoderKLWan(**vae_config)
            else:
                config = UMT5Config(**preset.text_encoder)
                config._attn_implementation = "eager"  # the only implementation that exports
                module = UMT5EncoderModel(config)
        if trained:
            from safetensors.torch import load_model

            load_model(module, str(Path(weights_dir) / f"{network}.safetensors"), strict=True)
        elif not meta:
            _random_init_(module, seed + NETWORKS.index(network))
        if not meta and dtype != torch.float32:
            module.to(dtype)  # the buffers __init__ computes in an explicit FP32
    # (a checkpoint keeps diffusers' _keep_in_fp32_modules in FP32, as from_pretrained does)
    return module.eval().requires_grad_(False)


def build_components(
    preset: str | Preset = "tiny",
    *,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    weights: str = "default",
    weights_dir: str | Path = TINY_WEIGHTS,
) -> Components:
    """Build the preset's three networks (each as `build_component` builds it) and tokenizer.

    `checkpoint`: a diffusers-format pipeline folder (transformer/, vae/, text_encoder/,
    tokenizer/). Without one: `tiny` loads its shipped trained weights when they exist
    (`weights="default"`; `seed` is then unused), otherwise weights are seeded random
    (`weights="random"` forces that); on device "meta" nothing is allocated (configs and
    parameter counts only). `weights_dir`: where the tiny preset's trained weights are
    (default: the shipped ones; `make train-tiny`'s output folder to try a fresh run).
    """
    from t2vserve.tokenizer import load_tokenizer

    preset = get_preset(preset) if isinstance(preset, str) else preset
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if checkpoint is not None:
        for sub in ("transformer", "vae", "text_encoder"):
            if not (Path(checkpoint) / sub / "config.json").exists():
                raise FileNotFoundError(f"{checkpoint} is not a diffusers checkpoint: missing "
                                        f"{sub}/config.json")
    nets = {n: build_component(preset, n, checkpoint=checkpoint, device=device, seed=seed,
                               dtype=dtype, weights=weights, weights_dir=weights_dir)
            for n in NETWORKS}
    if checkpoint is not None:
        tokenizer = load_tokenizer(Path(checkpoint) / "tokenizer")
    else:
        tokenizer = load_tokenizer() if preset.name == "tiny" else None
    return Components(preset, nets["text_encoder"], nets["transformer"], nets["vae"], tokenizer)
