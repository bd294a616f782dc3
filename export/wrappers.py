"""Export wrappers: each network as a module with named, plain-tensor inputs and outputs.

These are also what the `torch` runner executes, so the reference pipeline and the exported
graphs run the very same forward.
"""

import torch
import torch.nn.functional as F
from torch import nn


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Same numbers as diffusers' in-place strided writes, built with stack+flatten: the
    # strided-slice version exports as ScatterND, this one as plain elementwise ops.
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


class WanAttnProcessorExport:
    """Drop-in for diffusers' WanAttnProcessor (text-to-video path, no image context).

    FP32: SDPA, bit-exact with diffusers. FP16 (export): the softmax runs in FP32 (an
    island), since attention logits of the 5B model overflow half precision at long sequence
    lengths. `sdpa_always=True` (eager GPU runs) keeps SDPA in half precision too: its flash
    and memory-efficient kernels keep the softmax statistics in FP32 on chip, whereas the
    island materialises (B, heads, L, L) scores, 143 GB for a 27,280-token CFG batch.
    """

    def __init__(self, sdpa_always: bool = False):
        self.sdpa_always = sdpa_always

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 rotary_emb=None):
        if attn.add_k_proj is not None:
            raise NotImplementedError("image-context (I2V) attention is not exported")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k = self.qk(attn, hidden_states, context, rotary_emb)
        v = attn.to_v(context).unflatten(2, (attn.heads, -1))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, L, head_dim)
        if q.dtype == torch.float32 or self.sdpa_always:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        else:
            scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
            out = torch.matmul(scores.float().softmax(dim=-1).to(v.dtype), v)
        out = out.transpose(1, 2).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))

    def qk(self, attn, hidden_states, context, rotary_emb):
        """q and k, (B, L, heads, head_dim), normed and rotated: the step that
        `runners.fused` replaces with one kernel each."""
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(context)).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            q, k = _rope(q, *rotary_emb), _rope(k, *rotary_emb)
        return q, k


def use_export_attention(transformer: nn.Module, sdpa_always: bool = False) -> None:
    for block in transformer.blocks:
        block.attn1.set_processor(WanAttnProcessorExport(sdpa_always))
        block.attn2.set_processor(WanAttnProcessorExport(sdpa_always))


class TextEncoderExport(nn.Module):
    """(input_ids, attention_mask) -> prompt_embeds, zero past each prompt's length.

    WanPipeline trims each embedding to its token count and pads with zeros; multiplying by
    the right-padded mask gives the same tensor.
    """

    def __init__(self, text_encoder: nn.Module):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids, attention_mask):
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)


class DiTExport(nn.Module):
    """(latents, timestep, prompt_embeds) -> noise_pred.

    timestep is per sample (B,): the Wan2.2 TI2V DiT wants one timestep per token (B, L);
    for text-to-video every token of a sample has the same one, so it is expanded here, in
    the graph, where it cannot be got wrong (a scalar timestep silently gives garbage).
    """

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer
        use_export_attention(transformer)
        self.patch = tuple(transformer.config.patch_size)

    def forward(self, latents, timestep, prompt_embeds):
        b, _, f, h, w = latents.shape
        p_t, p_h, p_w = self.patch
        seq_len = (f // p_t) * (h // p_h) * (w // p_w)
        per_token = timestep.to(torch.float32).unsqueeze(1).expand(b, seq_len)
        out = self.transformer(
            hidden_states=latents.to(self.transformer.dtype),
            timestep=per_token,
            encoder_hidden_states=prompt_embeds.to(self.transformer.dtype),
            return_dict=False,
        )[0]
        return out.float()
