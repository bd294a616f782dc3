"""What a generation request is, and how it is checked before any heavy work.

Pure Python: the Triton models, the client and the in-process pipeline share it.
"""

import math
from dataclasses import dataclass

from t2vserve.text_corpus import WAN_DEFAULT_NEGATIVE_PROMPT


class RequestValidationError(ValueError):
    """Bad input from the caller; becomes Triton INVALID_ARG / HTTP 400."""


@dataclass(frozen=True)
class Limits:
    min_size: int = 64
    max_size: int = 256
    size_multiple: int = 32
    min_frames: int = 5
    max_frames: int = 33
    min_steps: int = 1
    max_steps: int = 50
    min_guidance: float = 1.0
    max_guidance: float = 20.0
    min_fps: int = 8
    max_fps: int = 30


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str = WAN_DEFAULT_NEGATIVE_PROMPT
    width: int = 128
    height: int = 128
    num_frames: int = 17
    fps: int = 24
    steps: int = 8
    guidance_scale: float = 5.0
    seed: int = 0

    def validate(self, limits: Limits = Limits()) -> "GenerationRequest":
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise RequestValidationError("prompt must be a non-empty UTF-8 string")
        for name in ("width", "height"):
            value = getattr(self, name)
            if (value % limits.size_multiple or not limits.min_size <= value <= limits.max_size):
                raise RequestValidationError(
                    f"{name} must be a multiple of {limits.size_multiple} in "
                    f"[{limits.min_size}, {limits.max_size}], got {value}"
                )
        if (self.num_frames - 1) % 4 or not limits.min_frames <= self.num_frames <= limits.max_frames:
            raise RequestValidationError(
                f"num_frames must be 4k+1 in [{limits.min_frames}, {limits.max_frames}], "
                f"got {self.num_frames}"
            )
        if not limits.min_steps <= self.steps <= limits.max_steps:
            raise RequestValidationError(
                f"steps must be in [{limits.min_steps}, {limits.max_steps}], got {self.steps}"
            )
        g = self.guidance_scale
        if not math.isfinite(g) or not limits.min_guidance <= g <= limits.max_guidance:
            raise RequestValidationError(
                f"guidance_scale must be finite in [{limits.min_guidance}, {limits.max_guidance}], "
                f"got {g}"
            )
        if not limits.min_fps <= self.fps <= limits.max_fps:
            raise RequestValidationError(
                f"fps must be in [{limits.min_fps}, {limits.max_fps}], got {self.fps}"
            )
        if not -(2**63) <= self.seed < 2**63:
            raise RequestValidationError("seed must fit in INT64")
        return self
