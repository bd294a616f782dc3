"""Fuse LoRA files into a bare diffusers `WanTransformer3DModel` through diffusers' own loader.

Accepted files: safetensors, one layout per file:

- `diffusers` (PEFT names, what `WanPipeline.save_lora_weights` writes):
      transformer.<module>.lora_A.weight    (rank, in_features)
      transformer.<module>.lora_B.weight    (out_features, rank)
      transformer.<module>.lora_B.bias      optional
      transformer.<module>.alpha            optional scalar
  where <module> is a Linear of the model, e.g. `blocks.0.attn1.to_q`, `blocks.0.attn2.to_out.0`,
  `blocks.0.ffn.net.0.proj`, `proj_out`. Scaling alpha / rank per module: alpha from the
  `.alpha` key, else from diffusers' `lora_adapter_metadata` in the safetensors header, else
  alpha = rank (scale 1, the PEFT convention).
- `wan` (the original Wan / lightx2v names):
      diffusion_model.blocks.N.{self_attn,cross_attn}.{q,k,v,o}.lora_down.weight / lora_up.weight
      diffusion_model.blocks.N.ffn.{0,2}.lora_down.weight / lora_up.weight
      ... .alpha  optional (scale alpha / rank), ... .diff_b  optional (bias delta)
  (`lora_A`/`lora_B` in place of `lora_down`/`lora_up` also load); diffusers' converter maps
  them to the `diffusers` names.

Fusing adds scale * (alpha / rank) * B @ A to each targeted weight, then removes the adapter
layers, so the module is a plain `WanTransformer3DModel` again: what the ONNX export and the
torch runtime see. Every LoRA module must exist in the model with matching shapes; diffusers
only warns and skips keys that match nothing, so this module checks them itself.

Each fusion reads its file again: diffusers' Wan converter rescales the caller's state dict in
place (cross-attention and FFN layers with alphas), so a dict reused for a second fusion would
be scaled twice.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from t2vserve.client.batch import sha256_file

LAYOUTS = {"transformer.": "diffusers", "diffusion_model.": "wan"}
SYNTAX = "--lora PATH[:SCALE], e.g. --lora lightning.safetensors:0.8 (SCALE defaults to 1.0)"
# Where the records of what was fused into a transformer live (copied with the module).
FUSED_ATTR = "t2vserve_fused_loras"


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    scale: float = 1.0


def parse_lora_arg(arg: str) -> LoraSpec:
    """`PATH[:SCALE]` -> LoraSpec. The scale is what follows the last ':' when that parses as
    a number; a path that itself holds ':' is taken whole when it names an existing file."""
    path, scale = arg, 1.0
    head, sep, tail = arg.rpartition(":")
    if sep and not Path(arg).is_file():
        try:
            scale = float(tail)
        except ValueError:
            raise ValueError(f"bad LoRA argument {arg!r}: SCALE {tail!r} is not a number; "
                             f"expected {SYNTAX}") from None
        path = head
    if not path:
        raise ValueError(f"bad LoRA argument {arg!r}: no PATH; expected {SYNTAX}")
    if not math.isfinite(scale):
        raise ValueError(f"bad LoRA argument {arg!r}: SCALE must be a finite number; "
                         f"expected {SYNTAX}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"LoRA file {path} not found")
    return LoraSpec(Path(path), scale)


def fused_loras(transformer: nn.Module) -> list[dict]:
    """The records of every LoRA fused into `transformer` so far, in order."""
    return list(getattr(transformer, FUSED_ATTR, []))


def fuse_loras(transformer: nn.Module, specs) -> list[dict]:
    """Fuse each LoRA into `transformer` in place, in order; returns one record per LoRA
    (file, path, sha256, scale, layout, layers) and appends them to the module's records
    (`fused_loras`)."""
    records = []
    for spec in specs:
        records.append(_fuse_one(transformer, spec))
        setattr(transformer, FUSED_ATTR, fused_loras(transformer) + [records[-1]])
    return records


def _fuse_one(transformer: Any, spec: LoraSpec) -> dict:  # diffusers' PeftAdapterMixin methods
    from diffusers.loaders import WanLoraLoaderMixin
    from peft.tuners.tuners_utils import BaseTunerLayer

    path = Path(spec.path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {path} not found")
    if not math.isfinite(spec.scale):
        raise ValueError(f"LoRA {path.name}: scale must be a finite number, got {spec.scale}")
    if any(isinstance(m, BaseTunerLayer) for m in transformer.modules()):
        raise ValueError("the transformer holds unfused LoRA adapters; fuse_loras takes a plain "
                         "WanTransformer3DModel")
    layout = _layout(path)
    sha256 = sha256_file(path)
    try:  # from the file every time (see the module docstring)
        state_dict, metadata = WanLoraLoaderMixin.lora_state_dict(
            str(path), return_lora_metadata=True)
    except ValueError as exc:  # the Wan converter refuses keys it has no mapping for
        raise ValueError(f"LoRA {path.name} ({layout} layout) cannot be converted by diffusers: "
                         f"{exc}") from None
    state_dict, alphas = _split_alphas(state_dict)
    modules = _check_keys(transformer, state_dict, path.name, layout)
    if alphas:
        stray = sorted(f"transformer.{m}.alpha" for m in set(alphas) - set(modules))
        if stray:
            raise ValueError(f"LoRA {path.name} (diffusers layout): .alpha keys without LoRA "
                             f"weights in the model: {stray[:5]}")
        if metadata:
            raise ValueError(f"LoRA {path.name}: both .alpha keys and lora_adapter_metadata; "
                             "keep one source of alpha")
        ranks = {m: state_dict[f"transformer.{m}.lora_A.weight"].shape[0] for m in modules}
        # a module without its own alpha keeps scale 1 (alpha = rank)
        alphas = {f"transformer.{m}.alpha": alphas.get(m, float(ranks[m])) for m in modules}

    adapter = f"t2vserve_{len(fused_loras(transformer))}"
    # What WanLoraLoaderMixin.load_lora_into_transformer calls, plus the alphas it leaves out.
    transformer.load_lora_adapter(state_dict, network_alphas=alphas or None, metadata=metadata,
                                  adapter_name=adapter, prefix="transformer")
    injected = {name for name, m in transformer.named_modules()
                if isinstance(m, BaseTunerLayer) and adapter in getattr(m, "lora_A", {})}
    assert injected == set(modules), sorted(injected ^ set(modules))  # checked above
    transformer.fuse_lora(lora_scale=spec.scale, adapter_names=[adapter])
    transformer.unload_lora()  # fused weights stay; the adapter layers go
    return {"file": path.name, "path": str(path), "sha256": sha256,
            "scale": float(spec.scale), "layout": layout, "layers": len(modules)}


def _layout(path: Path) -> str:
    from safetensors import safe_open

    if path.suffix != ".safetensors":
        raise ValueError(f"LoRA {path.name}: expected a .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise ValueError(f"LoRA {path.name} is not a readable safetensors file: {exc}") from None
    found = {name for prefix, name in LAYOUTS.items() if any(k.startswith(prefix) for k in keys)}
    strays = [k for k in keys if not k.startswith(tuple(LAYOUTS))]
    if len(found) != 1 or strays:
        raise ValueError(
            f"LoRA {path.name}: keys must all start with 'transformer.' (diffusers/PEFT layout) "
            f"or all with 'diffusion_model.' (Wan/lightx2v layout); first others: "
            f"{(strays or keys)[:5]}")
    return found.pop()


def _split_alphas(state_dict: dict) -> tuple[dict, dict]:
    """diffusers-layout `.alpha` keys -> ({other keys}, {module: alpha}). The Wan layout's alphas
    are folded into the weights by diffusers' converter before this sees them."""
    alphas = {k.removeprefix("transformer.").removesuffix(".alpha"): float(v)
              for k, v in state_dict.items() if k.endswith(".alpha")}
    return {k: v for k, v in state_dict.items() if not k.endswith(".alpha")}, alphas


def _check_keys(transformer: nn.Module, state_dict: dict, name: str, layout: str) -> list[str]:
    """The model's module names the LoRA targets; a ValueError naming the first keys that match
    no Linear of the model, or whose shapes do not fit it."""
    model = dict(transformer.named_modules())
    unmatched, misfit = [], []
    targets: dict[str, set[str]] = {}
    for key, value in state_dict.items():
        module, sep, part = key.removeprefix("transformer.").partition(".lora_")
        target = model.get(module)
        if not sep or not isinstance(target, nn.Linear):
            unmatched.append(key)
            continue
        targets.setdefault(module, set()).add(part)
        want = {"A.weight": (None, target.in_features), "B.weight": (target.out_features, None),
                "B.bias": (target.out_features,)}.get(part)
        if want is None or len(want) != value.ndim or any(
                w is not None and w != s for w, s in zip(want, value.shape)):
            misfit.append(f"{key} {tuple(value.shape)} vs {module} "
                          f"({target.out_features}x{target.in_features})")
    what = f"LoRA {name} ({layout} layout, diffusers' names)"
    if unmatched:
        raise ValueError(f"{what}: {len(unmatched)} of {len(state_dict)} keys match no Linear of "
                         f"{type(transformer).__name__}; first: {unmatched[:5]}")
    if misfit:
        raise ValueError(f"{what}: shapes do not fit the model: {misfit[:5]}")
    half = [m for m, parts in targets.items() if not {"A.weight", "B.weight"} <= parts]
    if half:
        raise ValueError(f"{what}: modules without both lora_A and lora_B weights: {half[:5]}")
    if not targets:
        raise ValueError(f"{what}: no LoRA weights in the file")
    return sorted(targets)
