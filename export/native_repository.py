"""Triton configs that serve the TensorRT plans natively (`platform: "tensorrt_plan"`).

For the NGC Triton container: text_encoder, dit, vae_decode_first and vae_decode_step run in
Triton's TensorRT backend; t2v and video_encoder stay Python models. Tensor names, types and
dims come from the export's manifest, batching and instances from the profile. Plans must be
built by the TensorRT version the container ships (engines.json records it).
"""

import json
import os
import shutil
from pathlib import Path

from t2vserve.export.trt_profiles import COMPONENT, GRAPHS
from t2vserve.serve.stages import load_manifest

TRITON_TYPES = {"FP32": "TYPE_FP32", "FP16": "TYPE_FP16", "BF16": "TYPE_BF16",
                "INT64": "TYPE_INT64", "INT32": "TYPE_INT32", "BOOL": "TYPE_BOOL",
                "float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16",
                "int64": "TYPE_INT64", "int32": "TYPE_INT32", "bool": "TYPE_BOOL"}


def max_batch_size(profile, graph: str) -> int:
    """Triton's max_batch_size, equal to the batch maximum of the engine's profile."""
    if graph == "text_encoder":
        return 2 * int(profile.model("text_encoder")["max_batch_size"])  # prompt + negative
    if graph == "dit":
        return int(profile.model("dit")["max_batch_size"])
    return 1  # the VAE engines decode one sample per call


def _tensor(graph: str, t: dict) -> str:
    if t["dtype"] not in TRITON_TYPES:
        raise ValueError(f"{graph}: {t['name']} has dtype {t['dtype']!r}; supported: "
                         f"{', '.join(sorted(TRITON_TYPES))}")
    if not t["shape"] or t["shape"][0] != "batch":
        raise ValueError(f"{graph}: {t['name']} has shape {t['shape']}; "
                         "the first axis must be 'batch'")
    dims = [d if isinstance(d, int) else -1 for d in t["shape"][1:]]
    line = f'{{ name: "{t["name"]}" data_type: {TRITON_TYPES[t["dtype"]]} '
    if not dims:
        # a (batch,) tensor: Triton wants one element per request, the engine sees no axis
        return line + "dims: [ 1 ] reshape: { shape: [ ] } }"
    return line + f"dims: [ {', '.join(map(str, dims))} ] }}"


def native_config(profile, graph: str, description: dict, version: str | None = None) -> str:
    model = profile.model(COMPONENT[graph])
    queue = profile.data["queue"]
    lines = []
    if version:
        lines.append(f"# plan built with TensorRT {version}: the container must ship the same")
    lines += [f'name: "{graph}"', 'platform: "tensorrt_plan"',
              f"max_batch_size: {max_batch_size(profile, graph)}"]
    for kind in ("input", "output"):
        items = [_tensor(graph, t) for t in description[f"{kind}s"]]
        lines.append(f"{kind} [\n  " + ",\n  ".join(items) + "\n]")
    lines += [
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {model['max_queue_delay_us']}",
        f"  priority_levels: {queue['priority_levels']}",
        f"  default_priority_level: {queue['default_priority']}",
        "  default_queue_policy {",
        f"    max_queue_size: {queue['max_queue_size']}",
        f"    default_timeout_microseconds: {queue['default_timeout_us']}",
        "    allow_timeout_override: true",
        "  }",
        "}",
    ]
    if graph == "text_encoder":
        enabled = "true" if profile.data["cache"]["text_encoder_response_cache"] else "false"
        lines.append(f"response_cache {{ enable: {enabled} }}")
    lines.append(f"instance_group [ {{ kind: KIND_GPU count: {model['instances']} }} ]")
    return "\n".join(lines) + "\n"


def _place_plan(src: Path, dst: Path) -> None:
    # A hard link costs no space (a 5B DiT plan is ~10 GB); a copy where links cannot cross.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def render_native_repository(profile, plans_dir: str | Path, out: str | Path) -> Path:
    """Write <out>/<graph>/config.pbtxt and <out>/<graph>/1/model.plan for the four graphs.

    Only these four model folders are replaced; the Python models (t2v, video_encoder) in
    `out` are left as they are.
    """
    plans_dir, out = Path(plans_dir), Path(out)
    manifest = load_manifest(profile)
    engines = plans_dir / "engines.json"
    version = json.loads(engines.read_text()).get("tensorrt") if engines.exists() else None
    for graph in GRAPHS:
        plan = plans_dir / f"{graph}.plan"
        if not plan.exists():
            raise FileNotFoundError(f"{plan} not found: run `t2vserve export --format tensorrt "
                                    f"--profile {profile.path}`")
        dst = out / graph
        if dst.exists():
            shutil.rmtree(dst)
        (dst / "1").mkdir(parents=True)
        (dst / "config.pbtxt").write_text(
            native_config(profile, graph, manifest["graphs"][graph], version))
        _place_plan(plan, dst / "1" / "model.plan")
    return out
