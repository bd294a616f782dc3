"""torch -> ONNX for every network of a preset, plus the manifest that describes them.

Dynamo exporter, opset 18 (the legacy exporter fails on aten::rms_norm and dynamic Expand).
Every dynamic axis is checked on the written graph: an axis the exporter froze is an error.
"""

import contextlib
import copy
import dataclasses
import hashlib
import io
import json
import logging
import time
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from t2vserve.export.lora import fuse_loras, fused_loras
from t2vserve.export.specs import DIT, TEXT_ENCODER, NetworkSpec
from t2vserve.export.vae_chunked import export_vae_onnx
from t2vserve.export.wrappers import DiTExport, TextEncoderExport

OPSET = 18
PRECISIONS = ("fp32", "fp16")
_ONNX_DTYPES = {1: "FP32", 10: "FP16", 7: "INT64", 6: "INT32", 16: "BF16"}


def mixed_precision(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy in `dtype`, except the parts the model declares FP32 (Wan DiT: rope, time
    embedding, modulation tables, norms); FP32LayerNorm upcasts its input by itself."""
    model = copy.deepcopy(model).to(dtype)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, param in model.named_parameters():
        if any(k in name.split(".") for k in keep):
            param.data = param.data.float()
    return model


def weight_hash(*modules: nn.Module) -> str:
    h = hashlib.sha256()
    for m in modules:
        for name, tensor in sorted(m.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def describe_graph(path: Path) -> dict:
    """Tensor names, dtypes and shapes (symbolic axes by name) as written in the graph."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def info(v):
        t = v.type.tensor_type
        return {"name": v.name, "dtype": _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)),
                "shape": [d.dim_param or d.dim_value for d in t.shape.dim]}

    return {"inputs": [info(v) for v in graph.input], "outputs": [info(v) for v in graph.output]}


def check_dynamic(path: Path, expected: dict[str, list[int]]) -> None:
    """Raise if any axis that must be dynamic was frozen to a number in the written graph."""
    desc = describe_graph(path)
    tensors = {t["name"]: t for t in desc["inputs"] + desc["outputs"]}
    for name, axes in expected.items():
        shape = tensors[name]["shape"]
        frozen = [a for a in axes if not isinstance(shape[a], str)]
        if frozen:
            raise RuntimeError(f"{path.name}: axes {frozen} of {name} were frozen: {shape}")


@contextlib.contextmanager
def quiet_exporter(what: str):
    """One progress line per graph instead of the exporter's chatter; the chatter is shown
    only if the export fails."""
    print(f"  exporting {what} ...", end="", flush=True)
    t0 = time.perf_counter()
    captured = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    try:
        with contextlib.redirect_stdout(captured), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for lg in loggers:
                lg.setLevel(logging.ERROR)
            yield
    except Exception:
        print(" failed\n" + captured.getvalue()[-4000:], flush=True)
        raise
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
    print(f" {time.perf_counter() - t0:.0f} s", flush=True)


def export_network(module: nn.Module, spec: NetworkSpec, args: tuple, path: Path) -> dict:
    with quiet_exporter(path.name):
        torch.onnx.export(
            module.eval(), args, str(path), input_names=list(spec.inputs),
            output_names=list(spec.outputs), dynamic_shapes=spec.dynamic_axes, dynamo=True,
            opset_version=OPSET, external_data=False, verbose=False,
        )
    check_dynamic(path, {n: list(axes) for n, axes in spec.dynamic_axes.items()})
    return describe_graph(path)


def export_preset(comps, out_dir: str | Path, *, precision: str = "fp32", loras=()) -> dict:
    """Write text_encoder.onnx, dit.onnx, vae_decode_{first,step}.onnx, tokenizer/ and
    manifest.json for built components; returns the manifest. `loras` (LoraSpec) are fused into
    a copy of the DiT first; the manifest lists every LoRA fused into the exported DiT (these
    and any fused into `comps.transformer` before), and its weight hash covers the fused DiT."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if loras:
        comps = dataclasses.replace(comps, transformer=copy.deepcopy(comps.transformer))
        fuse_loras(comps.transformer, loras)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preset = comps.preset
    # T5-class encoders overflow in FP16: the encoder stays FP32 (BF16 is a GPU option).
    dtypes = {"text_encoder": torch.float32,
              "dit": torch.float16 if precision == "fp16" else torch.float32,
              "vae": torch.float16 if precision == "fp16" else torch.float32}
    graphs = {}

    encoder = TextEncoderExport(comps.text_encoder)
    graphs["text_encoder"] = export_network(
        encoder, TEXT_ENCODER, TEXT_ENCODER.sample(preset), out / "text_encoder.onnx")

    dit = DiTExport(mixed_precision(comps.transformer, dtypes["dit"])
                    if dtypes["dit"] != torch.float32 else comps.transformer)
    graphs["dit"] = export_network(dit, DIT, DIT.sample(preset), out / "dit.onnx")

    vae = comps.vae if dtypes["vae"] == torch.float32 else copy.deepcopy(comps.vae).to(dtypes["vae"])
    with quiet_exporter("vae_decode_first.onnx + vae_decode_step.onnx"):
        vae_desc = export_vae_onnx(vae, out, opset=OPSET)
    graphs["vae_decode_first"] = describe_graph(out / "vae_decode_first.onnx")
    graphs["vae_decode_step"] = describe_graph(out / "vae_decode_step.onnx")

    if comps.tokenizer is None:
        raise ValueError(f"preset {preset.name} has no tokenizer: pass --checkpoint")
    comps.tokenizer.save_pretrained(str(out / "tokenizer"))

    manifest = {
        "preset": preset.name,
        "precision": {k: str(v).removeprefix("torch.") for k, v in dtypes.items()},
        "opset": OPSET,
        "weight_hash": weight_hash(comps.text_encoder, comps.transformer, comps.vae),
        "loras": fused_loras(comps.transformer),
        "text_len": preset.text_len,
        "latent_channels": preset.latent_channels,
        "vae_stride": [4, 16, 16],
        "latents_mean": list(comps.vae.config.latents_mean),
        "latents_std": list(comps.vae.config.latents_std),
        "num_vae_caches": vae_desc.get("num_caches"),
        "graphs": graphs,
        "versions": _versions(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


def _versions() -> dict:
    import diffusers
    import onnxruntime
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}
