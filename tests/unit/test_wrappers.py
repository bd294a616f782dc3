"""The export wrappers compute exactly what diffusers / WanPipeline compute."""

import copy

import torch

from t2vserve.export.wrappers import DiTExport, TextEncoderExport


def test_dit_wrapper_is_bit_exact_with_diffusers_and_per_token_timesteps(tiny):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 48, 3, 8, 6, generator=g)
    t = torch.tensor([999.0, 321.0])
    e = torch.randn(2, 64, 32, generator=g)
    seq_len = 3 * 4 * 3
    reference = copy.deepcopy(tiny.transformer)  # diffusers' own attention processor
    with torch.inference_mode():
        ref = reference(x, t[:, None].expand(2, seq_len), e, return_dict=False)[0]
        ours = DiTExport(copy.deepcopy(tiny.transformer))(x, t, e)
        # a scalar timestep per sample would be silently different on the TI2V DiT:
        scalar = reference(x, t, e, return_dict=False)[0]
    assert torch.equal(ours, ref)
    assert not torch.equal(scalar, ref)


def test_text_encoder_wrapper_matches_wan_pipeline_padding(tiny):
    from diffusers import WanPipeline

    prompts = ["a red cup", "一款黑色无线蓝牙降噪耳机佩戴在人耳上"]
    n = tiny.preset.text_len
    wan = WanPipeline(tokenizer=tiny.tokenizer, text_encoder=tiny.text_encoder,
                      transformer=None, vae=None, scheduler=None)
    enc = tiny.tokenizer(prompts, padding="max_length", max_length=n, truncation=True,
                         return_tensors="pt")
    with torch.inference_mode():
        ref = wan._get_t5_prompt_embeds(prompts, max_sequence_length=n, device=torch.device("cpu"))
        ours = TextEncoderExport(tiny.text_encoder)(enc.input_ids, enc.attention_mask)
    assert torch.equal(ours, ref)
    assert ours[0, enc.attention_mask[0].sum():].abs().sum() == 0
