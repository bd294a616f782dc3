"""Deployment profiles: one YAML per target, the single source of truth for serving.

Model preset and artifacts, runtime and precision per component, request limits and
defaults, batching and instances per Triton model, queue policy, cache, server ports.
"""

from dataclasses import dataclass
from pathlib import Path

import t2vserve.profiles

import yaml

from t2vserve.schema import Limits

REQUIRED = {
    "name": None,
    "model": ("preset", "artifacts", "scheduler"),
    "components": ("text_encoder", "dit", "vae_decoder"),
    "limits": ("width", "height", "num_frames", "steps", "guidance_scale", "fps",
               "prompt_bytes", "prompt_tokens"),
    "defaults": ("width", "height", "num_frames", "fps", "steps", "guidance_scale", "seed"),
    "models": ("t2v", "text_encoder", "dit", "vae_decoder", "video_encoder"),
    "queue": ("max_queue_size", "default_timeout_us", "priority_levels", "default_priority"),
    "cache": ("text_encoder_response_cache", "size_bytes"),
    "server": ("address", "http_port", "grpc_port", "metrics_port", "supervisor_port",
               "exit_timeout_s", "shm_bytes"),
}


# components.<c>.kernels: the fused Triton kernels (t2vserve.runners.fused) in runtime torch
KERNELS = ("triton", "off")
FUSED_COMPONENTS = ("dit", "vae_decoder")

# profiles/ is installed as t2vserve.profiles, so `--profile cpu-tiny` works from a wheel too
SHIPPED = Path(t2vserve.profiles.__file__).parent


class ProfileError(ValueError):
    pass


def shipped_profiles() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


@dataclass(frozen=True)
class Profile:
    data: dict
    path: Path
    base: Path | None = None   # what relative paths are relative to, when not the file's

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def root(self) -> Path:
        """Relative paths in a profile are relative to the project root (profiles/..), or
        to the working directory for a shipped profile named on the command line."""
        return self.base or self.path.resolve().parent.parent

    def resolve(self, p: str | None) -> Path | None:
        if p is None:
            return None
        p = Path(p)
        return p if p.is_absolute() else self.root / p

    @property
    def artifacts(self) -> Path:
        return self.resolve(self.data["model"]["artifacts"])

    @property
    def limits(self) -> Limits:
        return limits_from(self.data["limits"])

    @property
    def defaults(self) -> dict:
        return dict(self.data["defaults"])

    def model(self, name: str) -> dict:
        return self.data["models"][name]

    def stream_instances(self) -> int:
        """t2v_stream's instances: `models.t2v_stream.instances`, else as many as t2v's."""
        stream = self.data["models"].get("t2v_stream")
        return int((stream or self.model("t2v"))["instances"])


def limits_from(lim: dict) -> Limits:
    w, h = lim["width"], lim["height"]
    sizes = lim.get("sizes") or []
    if not all(isinstance(s, (list, tuple)) and len(s) == 2 for s in sizes):
        raise ProfileError(f"limits.sizes must list [width, height] pairs, got {sizes!r}")
    return Limits(
        width=(w["min"], w["max"]), height=(h["min"], h["max"]),
        width_multiple=w.get("multiple", 32), height_multiple=h.get("multiple", 32),
        sizes=tuple((int(a), int(b)) for a, b in sizes),
        num_frames=(lim["num_frames"]["min"], lim["num_frames"]["max"]),
        steps=(lim["steps"]["min"], lim["steps"]["max"]),
        guidance_scale=(float(lim["guidance_scale"]["min"]), float(lim["guidance_scale"]["max"])),
        fps=(lim["fps"]["min"], lim["fps"]["max"]),
        prompt_bytes=int(lim["prompt_bytes"]), prompt_tokens=int(lim["prompt_tokens"]),
    )


def load_profile(path: str | Path) -> Profile:
    """A profile file, or a shipped profile by name (`cpu-tiny`, or `profiles/cpu-tiny.yaml`
    where no such file exists here): its relative paths then start at the working directory."""
    path, base = Path(path), None
    if not path.exists():
        shipped = SHIPPED / f"{path.stem}.yaml"
        if path.parent not in (Path("."), Path("profiles")) or not shipped.exists():
            raise ProfileError(f"profile {path} not found (shipped profiles: "
                               f"{', '.join(shipped_profiles())})")
        path, base = shipped, Path.cwd()
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile is a YAML mapping")
    # a rendered repository's copy says where the original's relative paths start
    if data.get("root") is not None:
        base = Path(data.pop("root"))
    missing = []
    for section, keys in REQUIRED.items():
        if section not in data:
            missing.append(section)
        elif keys:
            missing += [f"{section}.{k}" for k in keys if k not in (data[section] or {})]
    if missing:
        raise ProfileError(f"{path}: missing keys: {', '.join(missing)}")
    for name, model in data["models"].items():
        if "instances" not in model:
            raise ProfileError(f"{path}: models.{name}.instances is missing")
    for name, spec in data["components"].items():
        check_kernels(name, spec or {}, path)
    return Profile(data, path, base)


def check_kernels(component: str, spec: dict, path) -> None:
    """`kernels: triton` swaps module code paths in the torch runtime; ONNX Runtime and
    TensorRT run exported graphs (TensorRT fuses on its own), so there it is refused."""
    kernels = spec.get("kernels", "off")
    where = f"{path}: components.{component}.kernels"
    if kernels not in KERNELS:
        raise ProfileError(f"{where} must be one of {', '.join(KERNELS)}, got {kernels!r}")
    if kernels == "off":
        return
    if spec.get("runtime") != "torch":
        raise ProfileError(f"{where}: triton applies to runtime torch only, not "
                           f"{spec.get('runtime')!r} (exported graphs keep their own fusion)")
    if component not in FUSED_COMPONENTS:
        raise ProfileError(f"{where}: no fused kernels for {component} "
                           f"(they exist for {', '.join(FUSED_COMPONENTS)})")
