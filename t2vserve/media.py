"""Frames -> H.264 MP4 bytes (PyAV's libx264), and back, plus the clip QC metrics."""

import functools
import io
from fractions import Fraction
from pathlib import Path

import numpy as np

# x264's AVX-512 code is not run-to-run deterministic: on an AVX-512 Xeon the same frames,
# one thread, fixed options, gave 3-8 different encodings in 40 (decoding up to 37 grey
# levels apart), while x264 capped at AVX2 gave 1 in 40 (and, on clips where the AVX-512
# output was stable, the same bytes). So on AVX-512 CPUs x264 gets everything it would
# detect but AVX-512: AVX2 (which brings AVX, FMA3, BMI1/2, LZCNT and SSE*) and fast SSE2.
# Every x86 CPU with AVX-512 has all of those, so the cap cannot select an instruction it
# lacks. perf/bench_encoder.py measures what it costs.
X264_ASM_WITHOUT_AVX512 = "AVX2,SSE2Fast"


def x264_asm(cpu_flags: set[str]) -> str | None:
    """x264's `asm` setting for a CPU with these /proc/cpuinfo flags; None = its own
    detection (no AVX-512 there, or not an x86 CPU)."""
    return X264_ASM_WITHOUT_AVX512 if "avx512f" in cpu_flags else None


@functools.cache
def host_x264_asm() -> str | None:
    """`x264_asm` for this machine's CPU (read once from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: leave x264 its own detection
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return x264_asm(set(flags))


def encode_mp4(frames: np.ndarray, fps: int, *, crf: int = 18, asm: str = "host") -> bytes:
    """uint8 (F, H, W, 3) -> MP4 bytes. Deterministic: one encoder thread, fixed options,
    no timestamps from the clock, no AVX-512 in x264 (see above), so the same frames give
    the same bytes. `asm`: "host" (that cap where the CPU has AVX-512), "auto" (x264's own
    detection; for benchmarks), or x264's `asm` setting itself."""
    import av

    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} {frames.shape}")
    buf = io.BytesIO()
    # fragmented MP4 needs no seekable output and streams as it is written
    with av.open(buf, mode="w", format="mp4",
                 options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(int(fps), 1))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        options = {"crf": str(crf), "preset": "medium", "threads": "1"}
        if asm == "host":
            asm = host_x264_asm() or "auto"
        if asm != "auto":
            options["x264-params"] = f"asm={asm}"
        stream.options = options
        container.metadata["encoder"] = "t2vserve"
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode_mp4(data: bytes) -> tuple[np.ndarray, float]:
    """MP4 bytes -> (uint8 (F, H, W, 3), fps)."""
    import av

    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.base_rate)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return np.stack(frames), fps


QC_NAMES = ("mean_luma", "black_frame_ratio", "frozen_frame_ratio", "temporal_flicker")
BLACK_LUMA = 16.0      # BT.601 studio black: a frame darker than this on average is black
FROZEN_DIFF = 0.5      # mean |frame - previous| below half a grey level: nothing moved


def qc_metrics(frames: np.ndarray) -> np.ndarray:
    """uint8 (F, H, W, 3) -> float32 [mean luma, black-frame ratio, frozen-frame ratio,
    temporal flicker (std of the frame-to-frame change of mean luma)]."""
    rgb = frames.astype(np.float32)
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    per_frame = luma.mean(axis=(1, 2))
    black = float((per_frame < BLACK_LUMA).mean())
    if len(frames) > 1:
        change = np.abs(np.diff(luma, axis=0)).mean(axis=(1, 2))
        frozen = float((change < FROZEN_DIFF).mean())
        flicker = float(np.diff(per_frame).std())
    else:
        frozen, flicker = 0.0, 0.0
    return np.array([per_frame.mean(), black, frozen, flicker], dtype=np.float32)
