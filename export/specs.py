"""One spec per network: tensor names, dtypes, dynamic axes and a sample input.

Export, the manifest, the parity check and (later) TensorRT optimisation profiles all read
these, so a tensor name is written once.
"""

from dataclasses import dataclass

import torch
from torch.export import Dim

from t2vserve.presets import Preset


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic_axes: dict  # input name -> {axis: torch.export.Dim}

    def sample(self, preset: Preset, *, batch: int = 2, text_len: int = 16,
               frames: int = 3, height: int = 8, width: int = 6, seed: int = 0) -> tuple:
        """Example inputs. batch >= 2, or the exporter freezes the batch axis."""
        g = torch.Generator().manual_seed(seed)
        c = preset.latent_channels
        if self.name == "text_encoder":
            vocab = preset.text_encoder["vocab_size"]
            ids = torch.randint(3, vocab, (batch, text_len), generator=g)
            mask = torch.ones(batch, text_len, dtype=torch.int64)
            mask[0, text_len // 2:] = 0  # one padded prompt: the mask path is exercised
            return ids * mask, mask
        if self.name == "dit":
            latents = torch.randn(batch, c, frames, height, width, generator=g)
            timestep = torch.linspace(999.0, 1.0, batch)
            embeds = torch.randn(batch, text_len, preset.dit["text_dim"], generator=g)
            return latents, timestep, embeds
        raise ValueError(f"no sample for {self.name}")


_batch = Dim("batch", min=1, max=64)
_text_len = Dim("text_len", min=1, max=1024)
_frames = Dim("latent_frames", min=1, max=64)
# The DiT patchifies by 2 in height and width, so those axes are 2x a symbol.
_half_h = Dim("half_latent_height", min=1, max=128)
_half_w = Dim("half_latent_width", min=1, max=128)

TEXT_ENCODER = NetworkSpec(
    "text_encoder",
    inputs=("input_ids", "attention_mask"),
    outputs=("prompt_embeds",),
    dynamic_axes={"input_ids": {0: _batch, 1: _text_len},
                  "attention_mask": {0: _batch, 1: _text_len}},
)
DIT = NetworkSpec(
    "dit",
    inputs=("latents", "timestep", "prompt_embeds"),
    outputs=("noise_pred",),
    dynamic_axes={"latents": {0: _batch, 2: _frames, 3: 2 * _half_h, 4: 2 * _half_w},
                  "timestep": {0: _batch},
                  "prompt_embeds": {0: _batch, 1: _text_len}},
)
