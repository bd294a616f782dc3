"""ONNX Runtime vs torch, per component and for the whole pipeline (`export --check`).

The reference is always the FP32 torch model, so FP16 graphs report their real error.
Inputs use shapes other than the export samples: a frozen axis would show up here.
"""

import numpy as np
import torch

from t2vserve.export.specs import DIT, TEXT_ENCODER
from t2vserve.export.wrappers import DiTExport, TextEncoderExport
from t2vserve.pipeline import Pipeline, decode_chunks
from t2vserve.runners import OnnxRuntimeRunner
from t2vserve.schema import GenerationRequest


def errors(ours: np.ndarray, ref: np.ndarray) -> dict:
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    scale = max(float(np.abs(ref).max()), 1e-12)
    return {"max_abs": float(diff.max()), "rel": float(diff.max()) / scale}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def check_components(comps, artifacts) -> dict:
    from pathlib import Path

    root = Path(artifacts)
    preset = comps.preset
    report = {}
    with torch.inference_mode():
        args = TEXT_ENCODER.sample(preset, batch=3, text_len=preset.text_len, seed=1)
        ref = TextEncoderExport(comps.text_encoder)(*args).numpy()
        ours = OnnxRuntimeRunner(root / "text_encoder.onnx").run(
            dict(zip(TEXT_ENCODER.inputs, (a.numpy() for a in args))))["prompt_embeds"]
        report["text_encoder"] = errors(ours, ref)

        args = DIT.sample(preset, batch=2, text_len=preset.text_len, frames=5, height=8,
                          width=8, seed=1)
        ref = DiTExport(comps.transformer)(*args).numpy()
        ours = OnnxRuntimeRunner(root / "dit.onnx").run(
            dict(zip(DIT.inputs, (a.numpy() for a in args))))["noise_pred"]
        report["dit"] = errors(ours, ref)

        g = torch.Generator().manual_seed(1)
        z = torch.randn(1, preset.latent_channels, 5, 8, 8, generator=g)
        ref = comps.vae.decode(z).sample.numpy()
        ours = decode_chunks(OnnxRuntimeRunner(root / "vae_decode_first.onnx"),
                                    OnnxRuntimeRunner(root / "vae_decode_step.onnx"), z.numpy())
        report["vae_decoder"] = errors(ours, ref)
    return report


def check_pipeline(comps, artifacts, request: GenerationRequest) -> dict:
    ref = Pipeline.from_components(comps).generate(request)
    ours = Pipeline.from_artifacts(artifacts).generate(request)
    return {"psnr_db": psnr(ours, ref),
            "max_abs_uint8": int(np.abs(ours.astype(int) - ref.astype(int)).max()),
            "frames": list(ours.shape)}
