"""Wan VAE decode as two graphs with explicit causal caches.

`AutoencoderKLWan.decode` walks latent frames one at a time through a private `feat_cache`
list; exporting it whole unrolls that loop and freezes the frame count. Here the loop body is
split into `decode_first` (latent frame 0) and `decode_step` (each later frame), and every
cache is a graph input/output of fixed shape (B, C_i, 2, h_i, w_i), so a runner drives the
graphs for any frame count (the one loop that does: `t2vserve.pipeline.decode_chunks`).
Padding to 2 frames is exact: a 1-frame cache with a zero frame in front equals the causal
conv's own zero padding, and the `"Rep"` marker (time_conv called without cache, i.e. two
zero frames) equals an all-zero cache.

Tensor names (both graphs): input `latents` (B, 48, 1, h, w); step inputs `cache_0..n-1`;
outputs `frames` (B, 3, 1 | 4, 16h, 16w) and `cache_0_out..cache_{n-1}_out`. Symbolic dims:
`batch`, `latent_height`, `latent_width` (caches: their multiples, e.g. `2*latent_height`).
"""

import contextlib
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from diffusers.models.autoencoders.autoencoder_kl_wan import WanUpsample, unpatchify

CACHE_T = 2
FRAMES_FIRST, FRAMES_STEP = 1, 4  # pixel frames per latent frame (temporal stride 4, causal)


def cache_names(n: int) -> list[str]:
    return [f"cache_{i}" for i in range(n)]


def _pad_cache(c: torch.Tensor) -> torch.Tensor:
    if c.shape[2] == CACHE_T:
        return c
    return torch.cat([c.new_zeros(c.shape[:2] + (CACHE_T - c.shape[2],) + c.shape[3:]), c], dim=2)


@torch.no_grad()
def _cache_spec(vae) -> list[tuple[int, int]]:
    """(channels, spatial scale vs latent) per cache slot, from a 1x1-latent, 2-frame probe.

    Spatial sizes are exact multiples of the latent size (x2 nearest upsampling, same-padded
    convs), so a 1x1 probe gives the scales; on a meta-device VAE this costs nothing.
    """
    p = next(vae.parameters())
    x = vae.post_quant_conv(torch.zeros(1, vae.config.z_dim, 2, 1, 1, device=p.device, dtype=p.dtype))
    # _cached_conv_counts also counts convs that never cache (conv_shortcut); keep used slots.
    feat, idx = [None] * vae._cached_conv_counts["decoder"], [0]
    vae.decoder(x[:, :, :1], feat_cache=feat, feat_idx=idx, first_chunk=True)
    vae.decoder(x[:, :, 1:], feat_cache=feat, feat_idx=[0])
    spec = []
    for c in feat[: idx[0]]:
        assert isinstance(c, torch.Tensor) and c.shape[2] == CACHE_T and c.shape[3] == c.shape[4]
        spec.append((int(c.shape[1]), int(c.shape[3])))
    return spec


def cache_shapes(vae, batch: int, h: int, w: int) -> list[tuple[int, ...]]:
    """Shape of each padded cache for a (batch, 48, *, h, w) latent."""
    return [(batch, ch, CACHE_T, s * h, s * w) for ch, s in _cache_spec(vae)]


class _VaeChunk(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.spec = _cache_spec(vae)
        # Graph I/O is FP32 whatever the VAE runs in (an FP16 VAE casts inside the graph).
        self.dtype = next(vae.parameters()).dtype

    @property
    def num_caches(self) -> int:
        return len(self.spec)

    def _run(self, latents, feat, first_chunk):
        # post_quant_conv is a 1x1x1 conv, so running it per frame gives _decode's numbers.
        x = self.vae.post_quant_conv(latents.to(self.dtype))
        out = self.vae.decoder(x, feat_cache=feat, feat_idx=[0], first_chunk=first_chunk)
        if self.vae.config.patch_size is not None:
            out = unpatchify(out, patch_size=self.vae.config.patch_size)
        return torch.clamp(out, min=-1.0, max=1.0).float()


class VaeDecodeFirst(_VaeChunk):
    """latents (B, 48, 1, h, w) -> (frames (B, 3, 1, 16h, 16w), cache_0, ..., cache_{n-1})."""

    def forward(self, latents):
        feat = [None] * self.num_caches
        frames = self._run(latents, feat, first_chunk=True)
        b, _, _, h, w = latents.shape
        caches = []
        for c, (ch, s) in zip(feat, self.spec):
            if isinstance(c, str):  # "Rep": the first time_conv call pads with zeros
                c = latents.new_zeros((b, ch, CACHE_T, s * h, s * w))
            caches.append(_pad_cache(c).float())
        return (frames, *caches)


class VaeDecodeStep(_VaeChunk):
    """(latents (B, 48, 1, h, w), cache_0..n-1) -> (frames (B, 3, 4, 16h, 16w), caches')."""

    def forward(self, latents, *caches):
        assert len(caches) == self.num_caches, (len(caches), self.num_caches)
        feat = [c.to(self.dtype) for c in caches]
        frames = self._run(latents, feat, first_chunk=False)
        for c in feat:
            assert c.shape[2] == CACHE_T
        return (frames, *(c.float() for c in feat))


@contextlib.contextmanager
def nearest_upsample(vae):
    """'nearest' for export: equal to 'nearest-exact' at an exact x2 (tested), and it maps to a
    plain ONNX Resize(nearest, asymmetric, floor) that every runtime supports."""
    ups = [m for m in vae.decoder.modules() if isinstance(m, WanUpsample)]
    modes = [m.mode for m in ups]
    for m in ups:
        m.mode = "nearest"
    try:
        yield
    finally:
        for m, mode in zip(ups, modes):
            m.mode = mode


def _dims_of(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _check_symbolic(model, path: Path) -> None:
    # Each latent/frames/cache tensor must keep batch and both spatial axes symbolic.
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = _dims_of(vi)
        frozen = [i for i in (0, 3, 4) if not isinstance(dims[i], str)]
        if frozen:
            raise RuntimeError(f"{path.name}: {vi.name} has frozen axes {frozen}: {dims}")


def _describe(model) -> dict:
    import onnx

    def io(vis):
        return [
            dict(name=vi.name, shape=_dims_of(vi),
                 dtype=onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name)
            for vi in vis
        ]

    return dict(inputs=io(model.graph.input), outputs=io(model.graph.output))


def export_vae_onnx(vae, out_dir, *, sample_hw=(8, 8), opset=18) -> dict:
    """Write vae_decode_first.onnx and vae_decode_step.onnx; return their I/O description."""
    import onnx
    from torch.export import Dim

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    batch, lh, lw = Dim("batch"), Dim("latent_height"), Dim("latent_width")
    p = next(vae.parameters())
    h, w = sample_hw
    # batch >= 2 in the example, else export specialises the batch axis to 1.
    z = torch.randn(2, vae.config.z_dim, 1, h, w, device=p.device, dtype=torch.float32)
    first, step = VaeDecodeFirst(vae).eval(), VaeDecodeStep(vae).eval()
    n = first.num_caches
    names = cache_names(n)
    out_names = ["frames"] + [f"{c}_out" for c in names]
    lat_dims = {0: batch, 3: lh, 4: lw}
    cache_dims = [{0: batch, 3: s * lh if s > 1 else lh, 4: s * lw if s > 1 else lw}
                  for _, s in first.spec]
    result = dict(opset=opset, num_caches=n, cache_frames=CACHE_T,
                  frames_per_latent=dict(first=FRAMES_FIRST, step=FRAMES_STEP), graphs={})
    # values do not matter for tracing; zeros skip an eager decode of the sample
    caches = [z.new_zeros(shape) for shape in cache_shapes(vae, 2, h, w)]
    with nearest_upsample(vae), torch.no_grad():
        jobs = [
            ("vae_decode_first", first, (z,), {"latents": lat_dims}, ["latents"]),
            ("vae_decode_step", step, (z, *caches),
             {"latents": lat_dims, "caches": tuple(cache_dims)}, ["latents", *names]),
        ]
        for name, module, args, dyn, in_names in jobs:
            path = out_dir / f"{name}.onnx"
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                # benign: every cache shares its axis names with the latent ("will not be used")
                warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
                # external_data=False: one file, unless over 2 GB (then the exporter splits)
                torch.onnx.export(module, args, path, dynamo=True, opset_version=opset,
                                  dynamic_shapes=dyn, input_names=in_names,
                                  output_names=out_names, external_data=False, verbose=False)
            model = onnx.load(path, load_external_data=False)
            _check_symbolic(model, path)
            result["graphs"][name] = dict(file=path.name, export_s=round(time.perf_counter() - t0, 2),
                                          **_describe(model))
    return result
