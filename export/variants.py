"""A model variant's own DiT (`t2vserve.sampling`): the profile's transformer with the
variant's LoRAs fused, exported next to the base artifacts.

`<artifacts>/variants/<name>/` holds `dit.onnx` and a `manifest.json` whose `weight_hash` is
the fused DiT's (the served model id and the step cache's calibration key on it), with the
LoRA records (file, sha256, scale). The text encoder, the VAE and the tokenizer are the base
artifacts': a LoRA changes the DiT only.
"""

import json
from pathlib import Path

import torch

from t2vserve.sampling import Variant, variant_dir


def variant_is_current(profile, variant: Variant) -> bool:
    """Whether the variant's export exists for these LoRA files (same hashes and scales) and
    for the current base weights."""
    from t2vserve.client.batch import sha256_file

    path = variant_dir(profile, variant) / "manifest.json"
    base = profile.artifacts / "manifest.json"
    if not path.exists() or not base.exists():
        return False
    from t2vserve.serve.stages import lora_specs

    manifest = json.loads(path.read_text())
    wanted = [(sha256_file(s.path), float(s.scale))
              for s in lora_specs(profile, variant)]
    have = [(r.get("sha256"), float(r.get("scale", 1.0))) for r in manifest.get("loras", [])]
    return wanted == have and manifest.get("base_weight_hash") == \
        json.loads(base.read_text()).get("weight_hash")


def export_variant_dit(profile, variant: Variant, log=print) -> dict:
    """Fuse the variant's LoRAs into the profile's DiT and export it; returns the manifest."""
    from t2vserve.export.lora import fuse_loras
    from t2vserve.export.onnx_export import OPSET, export_network, mixed_precision, weight_hash
    from t2vserve.export.specs import DIT
    from t2vserve.export.wrappers import DiTExport
    from t2vserve.presets import build_component, get_preset
    from t2vserve.serve.stages import lora_specs

    model = profile.data["model"]
    preset = get_preset(model["preset"])
    out = variant_dir(profile, variant)
    out.mkdir(parents=True, exist_ok=True)
    log(f"exporting variant {variant.name}: {model['preset']} DiT with "
        f"{len(variant.loras)} LoRA(s) fused -> {out}")
    module = build_component(model["preset"], "transformer",
                             checkpoint=profile.resolve(model.get("checkpoint")))
    records = fuse_loras(module, lora_specs(profile, variant))
    fp16 = profile.data["components"]["dit"].get("precision") == "fp16"
    fused_hash = weight_hash(module)
    exported = mixed_precision(module, torch.float16) if fp16 else module
    graph = export_network(DiTExport(exported), DIT, DIT.sample(preset), out / "dit.onnx")
    base = json.loads((profile.artifacts / "manifest.json").read_text())
    manifest = {"preset": preset.name, "variant": variant.name, "opset": OPSET,
                "weight_hash": fused_hash, "base_weight_hash": base["weight_hash"],
                "loras": [{**r, "path": str(r.get("path", ""))} for r in records],
                "precision": {"dit": "float16" if fp16 else "float32"},
                "graphs": {"dit": graph}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def ensure_variants(profile, log=print) -> list[Path]:
    """Export every LoRA variant whose export is missing or stale; returns what was written."""
    from t2vserve.sampling import variants_of

    written = []
    for variant in variants_of(profile).values():
        if variant.loras and not variant_is_current(profile, variant):
            export_variant_dit(profile, variant, log)
            written.append(variant_dir(profile, variant))
    return written


def ensure_calibrations(profile, log=print) -> list[Path]:
    """Calibrate every step-cache variant whose curve is missing or was measured on other
    weights (`t2vserve calibrate-cache`, run here with its defaults); returns what was
    written."""
    from t2vserve.export.calibrate import calibrate_cache
    from t2vserve.sampling import CacheCurve, calibration_path, variants_of
    from t2vserve.serve.stages import variant_manifest

    written = []
    for variant in variants_of(profile).values():
        if variant.sampling.cache is None:
            continue
        path = calibration_path(profile, variant)
        try:
            CacheCurve.load(path, variant_manifest(profile, variant)["weight_hash"])
            continue
        except (FileNotFoundError, ValueError) as why:
            log(f"variant {variant.name}: {why}; calibrating now")
        written.append(calibrate_cache(profile, variant.name, log=log))
    return written
