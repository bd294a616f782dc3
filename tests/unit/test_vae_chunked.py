"""Chunked VAE decode (decode_first + decode_step with explicit caches) vs vae.decode.

Eager torch must be bit-exact; the ONNX graphs, run by onnxruntime at a batch and latent
size other than the export sample, must match torch to fp32 rounding. Exporting the two
graphs takes ~80 s on the 2-core CI machine (symbolic-shape tracing), hence `slow`; the
graphs are the session's `tiny_artifacts` export.
"""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from t2vserve.export.vae_chunked import (
    VaeDecodeFirst,
    VaeDecodeStep,
    _check_symbolic,
    cache_names,
    cache_shapes,
    nearest_upsample,
)
from t2vserve.pipeline import decode_chunks, vae_runners
from t2vserve.runners import OnnxRuntimeRunner, to_host


@pytest.fixture(scope="module")
def vae(tiny):
    return tiny.vae


@pytest.fixture(scope="module")
def chunked(vae):
    """The chunk wrappers run eagerly as (first, step) runners."""
    return vae_runners(vae)


@pytest.fixture(scope="module")
def exported(tiny_artifacts):
    """The VAE graphs as `t2vserve export` wrote them (exported once per session)."""
    manifest = json.loads((tiny_artifacts / "manifest.json").read_text())
    return tiny_artifacts, {"num_caches": manifest["num_vae_caches"], "graphs": manifest["graphs"]}


@pytest.mark.parametrize("hw", [(4, 4), (8, 6)])
@pytest.mark.parametrize("t", [1, 2, 3, 5])
def test_chunked_is_bit_exact(vae, chunked, hw, t):
    z = torch.randn(2, 48, t, *hw, generator=torch.Generator().manual_seed(t))
    with torch.no_grad():
        ref = vae.decode(z).sample
        out = decode_chunks(*chunked, z)
    assert out.shape == (2, 3, 4 * (t - 1) + 1, 16 * hw[0], 16 * hw[1])
    assert torch.equal(out, ref)


def test_nearest_equals_nearest_exact_at_x2(vae):
    x = torch.randn(3, 5, 7, 6)
    assert torch.equal(F.interpolate(x, scale_factor=2.0, mode="nearest"),
                       F.interpolate(x, scale_factor=2.0, mode="nearest-exact"))
    z = torch.randn(2, 48, 2, 4, 6, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = vae.decode(z).sample
        with nearest_upsample(vae):
            out = vae.decode(z).sample
    assert torch.equal(out, ref)
    ups = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Upsample)]
    assert ups and all(m.mode == "nearest-exact" for m in ups)  # restored after export mode


def test_cache_shapes_match_first_chunk(vae, chunked):
    z = torch.randn(2, 48, 1, 4, 6)
    with torch.no_grad():
        _, *caches = chunked[0].module(z)
    assert [tuple(c.shape) for c in caches] == cache_shapes(vae, 2, 4, 6)
    assert cache_names(len(caches))[-1] == f"cache_{len(caches) - 1}"


def test_frozen_axis_is_rejected(tmp_path):
    from onnx import TensorProto, helper

    def model(batch):
        vi = helper.make_tensor_value_info("latents", TensorProto.FLOAT, [batch, 48, 1, "h", "w"])
        return helper.make_model(helper.make_graph([], "g", [vi], [vi]))

    _check_symbolic(model("batch"), tmp_path / "ok.onnx")
    with pytest.raises(RuntimeError, match="frozen"):
        _check_symbolic(model(2), tmp_path / "frozen.onnx")


@pytest.mark.slow
def test_onnx_graphs_are_symbolic(exported):
    import onnx

    out, info = exported
    n = info["num_caches"]
    for name in ("vae_decode_first", "vae_decode_step"):
        model = onnx.load(out / f"{name}.onnx")
        inputs = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
                  for vi in model.graph.input}
        assert inputs["latents"] == ["batch", 48, 1, "latent_height", "latent_width"]
        outputs = [vi.name for vi in model.graph.output]
        assert outputs == ["frames"] + [f"{c}_out" for c in cache_names(n)]
        if name == "vae_decode_step":
            assert list(inputs) == ["latents"] + cache_names(n)
            for c in cache_names(n):
                b, _, t, h, w = inputs[c]
                assert b == "batch" and t == 2 and "latent_height" in h and "latent_width" in w
        assert info["graphs"][name]["inputs"][0]["shape"] == inputs["latents"]


@pytest.mark.slow
@pytest.mark.parametrize("batch, hw", [(1, (4, 6)), (3, (3, 5))])
def test_onnx_matches_torch(vae, chunked, exported, batch, hw):
    out, _ = exported
    runners = [OnnxRuntimeRunner(out / f"{n}.onnx") for n in ("vae_decode_first", "vae_decode_step")]
    z = torch.randn(batch, 48, 3, *hw, generator=torch.Generator().manual_seed(batch))
    ref = decode_chunks(*chunked, z).numpy()
    got = to_host(decode_chunks(*runners, z))  # the pipeline's own loop on ONNX Runtime
    assert got.shape == ref.shape == (batch, 3, 9, 16 * hw[0], 16 * hw[1])
    err = float(np.abs(got - ref).max())
    print(f"\nORT vs torch, batch {batch}, latent {hw}: max abs diff {err:.3g}")
    assert err <= 1e-4
