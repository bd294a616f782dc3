"""The one VAE decode (`pipeline.decode_frames`): its caches stay on the runners' device
from latent frame to latent frame, only the uint8 frames cross to the host (once, into the
frame store video_encoder reads), and the server and `bench gpu` run that same function."""

import inspect

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml

from t2vserve import pipeline
from t2vserve.perf import bench_gpu
from t2vserve.profile import load_profile
from t2vserve.serve import frames, stages


class Watched:
    """A runner as it is, recording what each call takes and returns."""

    def __init__(self, runner, name, events):
        self.runner, self.name, self.events = runner, name, events
        self.input_names, self.output_names = runner.input_names, runner.output_names
        self.device = runner.device

    def run(self, inputs):
        out = self.runner.run(inputs)
        self.events.append(("run", self.name, dict(inputs), out))
        return out


@pytest.fixture
def conversions(monkeypatch):
    """Every tensor -> numpy conversion (torch and ONNX Runtime), in order."""
    events = []
    to_numpy, ort_numpy = torch.Tensor.numpy, ort.OrtValue.numpy

    def tensor_numpy(self, *args, **kwargs):
        events.append(("numpy", self.dtype, tuple(self.shape)))
        return to_numpy(self, *args, **kwargs)

    def ortvalue_numpy(self):
        events.append(("numpy", self.data_type(), tuple(self.shape())))
        return ort_numpy(self)

    monkeypatch.setattr(torch.Tensor, "numpy", tensor_numpy)
    monkeypatch.setattr(ort.OrtValue, "numpy", ortvalue_numpy)
    return events


def _vae_stage(runtime, tiny, tmp_path, request):
    if runtime == "torch":  # the served decode over the eager wrappers, no export needed
        stage = object.__new__(stages.VaeStage)
        stage.first, stage.step = pipeline.vae_runners(tiny.vae)
        stage.mean = np.asarray(tiny.vae.config.latents_mean, np.float32)
        stage.std = np.asarray(tiny.vae.config.latents_std, np.float32)
        return stage
    # the served stage as the cpu-tiny profile builds it: ONNX Runtime over the export
    data = yaml.safe_load(open("profiles/cpu-tiny.yaml"))
    data["model"]["artifacts"] = str(request.getfixturevalue("tiny_artifacts"))
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return stages.VaeStage(load_profile(path))


@pytest.mark.parametrize("runtime", ["torch", pytest.param("onnxruntime", marks=pytest.mark.slow)])
def test_served_vae_keeps_caches_on_the_device(runtime, tiny, tmp_path, request):
    stage = _vae_stage(runtime, tiny, tmp_path, request)
    conversions = request.getfixturevalue("conversions")  # counted from here on
    stage.first = Watched(stage.first, "first", conversions)
    stage.step = Watched(stage.step, "step", conversions)
    latents = np.random.default_rng(0).standard_normal((2, 48, 3, 4, 4)).astype(np.float32)

    handles = stage.decode_to_store(latents, tmp_path)  # what vae_decoder serves

    clips = [frames.take(h, tmp_path) for h in handles]
    assert [(c.dtype, c.shape) for c in clips] == [(np.uint8, (9, 64, 64, 3))] * 2
    runs = [e for e in conversions if e[0] == "run"]
    assert [e[1] for e in runs] == ["first", "step", "step"] * 2  # one sample at a time
    for _, _, inputs, out in runs:
        for value in [*inputs.values(), *out.values()]:
            assert isinstance(value, torch.Tensor) and value.device == stage.first.device
    # each step takes the previous call's cache outputs themselves: no copy, no round trip
    for (_, _, _, before), (_, name, inputs, _) in zip(runs, runs[1:]):
        if name == "step":
            assert all(inputs[c] is before[c + "_out"] for c in inputs if c != "latents")
    # nothing became a host array on the way: the finished uint8 clips were copied once,
    # straight into the frame store's files (torch copy_ into the mapped file)
    assert not [e for e in conversions if e[0] == "numpy"]
    expected = stage.decode(latents)
    assert all(np.array_equal(c, e.numpy()) for c, e in zip(clips, expected))
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".npy") == sorted(handles)


def test_server_pipeline_and_bench_decode_through_one_function(tiny, monkeypatch):
    assert stages.decode_frames is pipeline.decode_frames
    callers = []
    loop = pipeline.decode_chunks

    def spy(*args, **kwargs):
        # the calling function (a comprehension has its own frame before Python 3.12)
        callers.append(next(f.function for f in inspect.stack()[1:] if f.function[0] != "<"))
        return loop(*args, **kwargs)

    monkeypatch.setattr(pipeline, "decode_chunks", spy)
    latents = np.zeros((1, 48, 2, 4, 4), np.float32)
    stage = object.__new__(stages.VaeStage)
    stage.first, stage.step = pipeline.vae_runners(tiny.vae)
    stage.mean = stage.std = np.ones(48, np.float32)
    stage.decode(latents)
    assert callers == ["decode_frames"]  # the server
    pipe = pipeline.Pipeline.from_components(tiny)
    pipe.decode(latents)
    assert callers == ["decode_frames"] * 2  # the in-process pipeline
    bench_gpu.run_bench(preset="tiny", device="cpu", shapes=[(64, 64, 5)], repeats=1,
                        warmup=0, baseline=False, log=lambda s: None)
    assert callers and set(callers) == {"decode_frames"} and len(callers) > 2  # the benchmark
