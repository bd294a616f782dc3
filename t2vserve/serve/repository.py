"""Render `model_repository/` templates for a deployment profile (`t2vserve repo build`).

Templates use `${dotted.key}` placeholders, filled from the profile plus values derived from
the exported artifacts. A key that does not exist is an error, and so is any `${` left in a
rendered file: nothing is substituted silently or left behind.
"""

import json
import re
import shutil
from pathlib import Path

import yaml

import t2vserve.model_repository
from t2vserve.profile import Profile
from t2vserve.sampling import variants_of
from t2vserve.schema import GenerationRequest
from t2vserve.serve.stages import load_manifest, model_id, variant_manifest

# model_repository/ is installed as t2vserve.model_repository (package data)
TEMPLATES = Path(t2vserve.model_repository.__file__).parent
MODELS = ("text_encoder", "dit", "vae_decoder", "video_encoder", "t2v", "t2v_stream")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


class RenderError(ValueError):
    pass


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif value is not None:
            out[name] = str(value)
    return out


def render(text: str, values: dict[str, str], source: str = "template") -> str:
    missing = sorted({m for m in _PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise RenderError(f"{source}: no value for {', '.join('${' + m + '}' for m in missing)}")
    out = _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
    if "${" in out:
        raise RenderError(f"{source}: a malformed placeholder survived rendering")
    return out


# the Triton models a profile's components.<c>.gpus places (one per component)
PLACED = ("text_encoder", "dit", "vae_decoder")
# Python-backend parameter: hand the model GPU input tensors as they are (DLPack) instead of
# copying every input to the host first, the backend's default
_GPU_INPUTS = '\nparameters { key: "FORCE_CPU_ONLY_INPUT_TENSORS" value: { string_value: "no" } }'


def gpus_of(profile: Profile, component: str) -> list[int] | None:
    """components.<c>.gpus: the GPU ids its Triton instances go on (`count` instances on
    each), or None for CPU instances."""
    gpus = profile.data["components"][component].get("gpus")
    if gpus is None:
        return None
    if (not isinstance(gpus, list) or not gpus
            or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus)
            or len(set(gpus)) != len(gpus)):
        raise RenderError(f"components.{component}.gpus must be a non-empty list of distinct "
                          f"GPU ids (integers >= 0), got {gpus!r}")
    return gpus


def placement_values(profile: Profile) -> dict[str, str]:
    """instance_group kind, `gpus` and the GPU-only parameters for each placed model: KIND_GPU
    on the profile's GPUs where it names them, KIND_CPU (and nothing added) otherwise."""
    values = {}
    # t2v's denoising loop sits with the DiT, so its per-step tensors stay on those GPUs
    for model, component in [(m, m) for m in PLACED] + [("t2v", "dit")]:
        gpus = gpus_of(profile, component)
        values.update({
            f"derived.{model}.instance_kind": "KIND_GPU" if gpus else "KIND_CPU",
            f"derived.{model}.gpus": f" gpus: [ {', '.join(map(str, gpus))} ]" if gpus else "",
            f"derived.{model}.device_parameters": _GPU_INPUTS if gpus else "",
        })
    return values


def pbtxt_string(text: str) -> str:
    """A quoted protobuf text-format string literal (ASCII: JSON escapes the rest)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def served_metadata(profile: Profile) -> dict[str, dict]:
    """What t2v and t2v_stream publish as config parameters: `model_ids` {variant (or
    "base"): the model id it serves}, the default first, and `request_defaults`, what an
    omitted input becomes (the profile's defaults, negative_prompt included)."""
    ids = {name: model_id(variant_manifest(profile, v), profile, name)
           for name, v in variants_of(profile).items()}
    defaults = dict(profile.defaults)
    defaults.setdefault("negative_prompt", GenerationRequest.negative_prompt)
    return {"model_ids": ids, "request_defaults": defaults}


def template_values(profile: Profile, profile_path: Path) -> dict[str, str]:
    manifest = load_manifest(profile)
    if profile.limits.prompt_tokens > manifest["text_len"]:
        raise RenderError(f"limits.prompt_tokens {profile.limits.prompt_tokens} exceeds the "
                          f"model's text length {manifest['text_len']}")
    text = manifest["graphs"]["text_encoder"]["outputs"][0]["shape"]
    values = flatten(profile.data)
    values.update({
        "profile_path": str(profile_path),
        "derived.text_dim": str(text[-1]),
        "derived.text_len": str(manifest["text_len"]),
        "derived.latent_channels": str(manifest["latent_channels"]),
        "derived.qc_size": "4",
        "derived.t2v_stream.instances": str(profile.stream_instances()),
    })
    values.update(placement_values(profile))
    for key, data in served_metadata(profile).items():
        values[f"derived.{key}"] = pbtxt_string(json.dumps(data, ensure_ascii=True))
    return values


def render_repository(profile: Profile, out: str | Path, templates: Path = TEMPLATES) -> Path:
    out = Path(out)
    # the models read the profile from a copy inside the repository, which also records
    # where its relative paths start (a shipped profile's start at the working directory)
    copy = out.resolve() / "profile.yaml"
    values = template_values(profile, copy)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    copy.write_text(yaml.safe_dump({**profile.data, "root": str(profile.root)},
                                   allow_unicode=True, sort_keys=False))
    for model in MODELS:
        src = templates / model
        if not (src / "config.pbtxt").exists():
            raise RenderError(f"missing template {src / 'config.pbtxt'}")
        dst = out / model
        dst.mkdir(parents=True)
        config = render((src / "config.pbtxt").read_text(), values, str(src / "config.pbtxt"))
        (dst / "config.pbtxt").write_text(config)
        (dst / "1").mkdir()
        if (src / "1" / "model.py").exists():
            shutil.copy2(src / "1" / "model.py", dst / "1" / "model.py")
    for variant in variants_of(profile).values():
        if variant.dit_model != "dit":  # its own weights: dit's template under its name
            _render_variant_dit(out, variant)
    return out


def _render_variant_dit(out: Path, variant) -> None:
    dit = (out / "dit" / "config.pbtxt").read_text()
    if 'name: "dit"\n' not in dit:
        raise RenderError("the dit template must start with name: \"dit\"")
    dst = out / variant.dit_model
    (dst / "1").mkdir(parents=True)
    (dst / "config.pbtxt").write_text(
        dit.replace('name: "dit"\n', f'name: "{variant.dit_model}"\n', 1)
        + f'\nparameters {{ key: "variant" value: {{ string_value: "{variant.name}" }} }}\n')
    shutil.copy2(out / "dit" / "1" / "model.py", dst / "1" / "model.py")
