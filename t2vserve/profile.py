"""Deployment profiles: one YAML per target, the single source of truth for serving.

Model preset and artifacts, runtime and precision per component, request limits and
defaults, batching and instances per Triton model, queue policy, cache, server ports.
"""

from dataclasses import dataclass
from pathlib import Path

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


class ProfileError(ValueError):
    pass


@dataclass(frozen=True)
class Profile:
    data: dict
    path: Path

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def root(self) -> Path:
        """Relative paths in a profile are relative to the project root (profiles/..)."""
        return self.path.resolve().parent.parent

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


def limits_from(lim: dict) -> Limits:
    w, h = lim["width"], lim["height"]
    return Limits(
        width=(w["min"], w["max"]), height=(h["min"], h["max"]),
        size_multiple=w.get("multiple", 32),
        num_frames=(lim["num_frames"]["min"], lim["num_frames"]["max"]),
        steps=(lim["steps"]["min"], lim["steps"]["max"]),
        guidance_scale=(float(lim["guidance_scale"]["min"]), float(lim["guidance_scale"]["max"])),
        fps=(lim["fps"]["min"], lim["fps"]["max"]),
        prompt_bytes=int(lim["prompt_bytes"]), prompt_tokens=int(lim["prompt_tokens"]),
    )


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    if not path.exists():
        raise ProfileError(f"profile {path} not found")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile is a YAML mapping")
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
    return Profile(data, path)
