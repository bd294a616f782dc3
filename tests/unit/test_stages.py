"""Serving stages without a server: request parsing and the runtimes behind one interface."""

import numpy as np
import pytest
import yaml

from t2vserve.profile import load_profile
from t2vserve.runners import to_host
from t2vserve.schema import RequestValidationError
from t2vserve.serve import stages


def _profile(tmp_path, artifacts, runtime="onnxruntime"):
    data = yaml.safe_load(open("profiles/cpu-tiny.yaml"))
    data["model"]["artifacts"] = str(artifacts)
    for c in data["components"].values():
        c["runtime"] = runtime
    path = tmp_path / "profiles" / f"{runtime}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return load_profile(path)


def test_absent_inputs_take_the_profile_defaults(tmp_path):
    profile = _profile(tmp_path, tmp_path)
    req = stages.parse_request({"prompt": np.array([b"a red cup"], dtype=object)}, profile)
    assert (req.width, req.height, req.num_frames, req.fps, req.steps) == (128, 128, 17, 24, 8)
    assert req.guidance_scale == 5.0 and req.negative_prompt.startswith("色调艳丽")
    with pytest.raises(RequestValidationError, match="prompt is required"):
        stages.parse_request({}, profile)
    with pytest.raises(RequestValidationError, match="exactly one value"):
        stages.parse_request({"prompt": np.array([b"a", b"b"], dtype=object)}, profile)


@pytest.mark.slow
def test_torch_and_onnxruntime_runtimes_agree(tmp_path, tiny_artifacts):
    onnx = _profile(tmp_path, tiny_artifacts, "onnxruntime")
    torch_ = _profile(tmp_path, tiny_artifacts, "torch")
    pairs = [("a red cup", "blurry"), ("红色杯子", "")]
    a = to_host(stages.TextStage(onnx).encode(pairs))
    b = to_host(stages.TextStage(torch_).encode(pairs))
    assert a.shape == (2, 2, 256, 32)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    latents = np.random.default_rng(0).standard_normal((1, 48, 2, 4, 4)).astype(np.float32)
    fa = to_host(stages.VaeStage(onnx).decode(latents))
    fb = to_host(stages.VaeStage(torch_).decode(latents))
    assert fa.shape == (1, 5, 64, 64, 3) and np.abs(fa.astype(int) - fb.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="supported: onnxruntime, torch, tensorrt"):
        stages.make_runner(_profile(tmp_path, tiny_artifacts, "openvino"), "dit", "dit")
    # tensorrt is known, but needs the plans `export --format tensorrt` builds
    with pytest.raises(FileNotFoundError, match="export --format tensorrt"):
        stages.make_runner(_profile(tmp_path, tiny_artifacts, "tensorrt"), "dit", "dit")
