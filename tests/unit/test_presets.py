import pytest
import torch

from t2vserve.presets import (
    UMT5_XXL, WAN22_5B_DIT, WAN22_5B_VAE, build_components, get_preset,
)


@pytest.fixture(scope="module")
def meta5b():
    return build_components("wan2.2-ti2v-5b", device="meta")


def test_5b_dit_has_the_published_config_and_5b_parameters(meta5b):
    cfg = meta5b.transformer.config
    assert tuple(cfg.patch_size) == (1, 2, 2)
    assert (cfg.num_layers, cfg.num_attention_heads, cfg.attention_head_dim) == (30, 24, 128)
    assert (cfg.ffn_dim, cfg.in_channels, cfg.out_channels, cfg.text_dim) == (14336, 48, 48, 4096)
    assert cfg.qk_norm == "rms_norm_across_heads" and cfg.cross_attn_norm
    n = sum(p.numel() for p in meta5b.transformer.parameters())
    assert abs(n - 5.0e9) / 5.0e9 < 0.01, n
    assert all(p.device.type == "meta" for p in meta5b.transformer.parameters())


def test_5b_vae_and_umt5_match_the_published_configs(meta5b):
    vae = meta5b.vae.config
    assert (vae.base_dim, vae.decoder_base_dim, vae.z_dim) == (160, 256, 48)
    assert (vae.in_channels, vae.out_channels, vae.patch_size) == (12, 12, 2)
    assert vae.is_residual and list(vae.temperal_downsample) == [False, True, True]
    assert (vae.scale_factor_temporal, vae.scale_factor_spatial) == (4, 16)
    assert len(vae.latents_mean) == len(vae.latents_std) == 48
    assert vae.latents_mean[0] == -0.2289 and vae.latents_std[-1] == 0.7744
    t5 = meta5b.text_encoder.config
    assert (t5.vocab_size, t5.d_model, t5.d_ff, t5.d_kv) == (256384, 4096, 10240, 64)
    assert (t5.num_layers, t5.num_heads, t5.relative_attention_num_buckets) == (24, 64, 32)
    # (transformers 5 forces tie_word_embeddings=True on every T5 config; the encoder has no
    # LM head, so it does not matter here)
    assert t5.feed_forward_proj == "gated-gelu" and t5.layer_norm_epsilon == 1e-6
    assert meta5b.preset.text_len == 512


def test_tiny_keeps_every_structural_feature_of_the_5b(tiny):
    dit, vae = tiny.transformer.config, tiny.vae.config
    for key in ("patch_size", "in_channels", "out_channels", "qk_norm", "cross_attn_norm"):
        assert dit[key] == WAN22_5B_DIT[key] or tuple(dit[key]) == tuple(WAN22_5B_DIT[key])
    for key in ("z_dim", "patch_size", "is_residual", "in_channels", "scale_factor_spatial",
                "scale_factor_temporal", "temperal_downsample", "dim_mult"):
        assert vae[key] == WAN22_5B_VAE[key]
    assert tiny.text_encoder.config.feed_forward_proj == UMT5_XXL["feed_forward_proj"]
    assert dit.text_dim == tiny.text_encoder.config.d_model
    # 17 frames at 128x128 -> 5x8x8 latents -> 128x128x17 frames
    z = torch.randn(1, 48, 5, 8, 8)
    with torch.inference_mode():
        assert tiny.vae.decode(z).sample.shape == (1, 3, 17, 128, 128)


def test_random_weights_are_seeded():
    first = build_components("tiny", seed=0, weights="random")
    again = build_components("tiny", seed=0, weights="random")
    other = build_components("tiny", seed=1, weights="random")
    a = dict(first.transformer.named_parameters())
    for name, p in again.transformer.named_parameters():
        assert torch.equal(p, a[name]), name
    assert not torch.equal(other.transformer.proj_out.weight, first.transformer.proj_out.weight)
    # the output projection must not be left at zero init: a zero DiT hides every bug
    assert first.transformer.proj_out.weight.abs().sum() > 0


def test_unknown_preset_and_bad_checkpoint_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="tiny"):
        get_preset("wan3")
    with pytest.raises(FileNotFoundError, match="transformer/config.json"):
        build_components("wan2.2-ti2v-5b", checkpoint=tmp_path)


def test_5b_loads_a_local_diffusers_checkpoint(tmp_path, tiny):
    # The loading path is the real one (from_pretrained, local files only); a tiny checkpoint
    # saved in diffusers layout stands in for the 5B folder.
    tiny.transformer.save_pretrained(tmp_path / "transformer")
    tiny.vae.save_pretrained(tmp_path / "vae")
    tiny.text_encoder.save_pretrained(tmp_path / "text_encoder")
    tiny.tokenizer.save_pretrained(str(tmp_path / "tokenizer"))
    loaded = build_components("tiny", checkpoint=tmp_path)
    for a, b in ((loaded.transformer, tiny.transformer), (loaded.vae, tiny.vae),
                 (loaded.text_encoder, tiny.text_encoder)):
        ref = dict(b.state_dict())
        for name, t in a.state_dict().items():
            assert torch.equal(t, ref[name]), name


def test_one_network_is_built_straight_in_its_dtype(tiny):
    """A stage builds one network, created in the target dtype (no FP32 copy first), with
    the same weights the whole preset gives it."""
    from t2vserve.presets import build_component

    dit = build_component("tiny", "transformer", dtype=torch.bfloat16)
    assert {p.dtype for p in dit.parameters()} == {torch.bfloat16}
    ref = tiny.transformer.state_dict()
    for name, t in dit.state_dict().items():
        assert torch.equal(t, ref[name].to(torch.bfloat16)), name
    with pytest.raises(ValueError, match="network must be one of"):
        build_component("tiny", "unet")


def test_one_network_loads_from_its_own_checkpoint_folder_in_its_dtype(tmp_path, tiny):
    from t2vserve.presets import build_component

    tiny.vae.save_pretrained(tmp_path / "vae")  # only the VAE's folder exists
    vae = build_component("tiny", "vae", checkpoint=tmp_path, dtype=torch.float16)
    assert {p.dtype for p in vae.parameters()} == {torch.float16}
    ref = tiny.vae.state_dict()
    for name, t in vae.state_dict().items():
        assert torch.equal(t, ref[name].to(torch.float16)), name
    with pytest.raises(FileNotFoundError, match="transformer/config.json"):
        build_component("tiny", "transformer", checkpoint=tmp_path)
