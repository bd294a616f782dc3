"""One network per stage process, and the device each Triton instance is given.

The stage construction (`stages.make_runner` / `_torch_runners`) runs for real on the tiny
preset with the torch runtime; the model args are plain dicts, as the Python backend passes
them to `initialize`.
"""

import json
import subprocess
import sys

import pytest
import torch
import yaml

from t2vserve.profile import load_profile
from t2vserve.serve import stages
from t2vserve.serve.repository import render_repository
from tests.unit.test_repository import config_of

NETWORK_CLASSES = {"text_encoder": "UMT5EncoderModel", "dit": "WanTransformer3DModel",
                   "vae_decoder": "AutoencoderKLWan"}
GRAPHS = {"text_encoder": ["text_encoder"], "dit": ["dit"],
          "vae_decoder": ["vae_decode_first", "vae_decode_step"]}


def _args(kind: str, device_id: int) -> dict:
    # what Triton's Python backend hands `initialize` (every value a string)
    return {"model_config": "{}", "model_instance_kind": kind,
            "model_instance_name": f"dit_0_{device_id}",
            "model_instance_device_id": str(device_id), "model_repository": "/repo",
            "model_version": "1", "model_name": "dit"}


def _torch_profile(tmp_path, gpus=None):
    data = yaml.safe_load(open("profiles/cpu-tiny.yaml"))
    data["model"]["artifacts"] = str(tmp_path / "artifacts")
    for c in data["components"].values():
        c["runtime"] = "torch"
        if gpus is not None:
            c["gpus"] = gpus
    path = tmp_path / "profiles" / "torch.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return load_profile(path)


@pytest.mark.parametrize("component", ["text_encoder", "dit", "vae_decoder"])
def test_a_stage_builds_only_its_own_network(tmp_path, tiny, component):
    runners = stages._torch_runners(_torch_profile(tmp_path), component)
    assert sorted(runners) == sorted(GRAPHS[component])
    modules = {type(m).__name__ for r in runners.values() for m in r.module.modules()}
    assert NETWORK_CLASSES[component] in modules
    assert not modules & (set(NETWORK_CLASSES.values()) - {NETWORK_CLASSES[component]})
    # the same weights the whole pipeline has for that network, and nothing else
    network = getattr(tiny, stages.NETWORK[component])
    own = network.state_dict()
    params = {}
    for r in runners.values():
        params.update({id(p): p for p in r.module.parameters()})
    assert sum(p.numel() for p in params.values()) == sum(p.numel() for p in network.parameters())
    first = next(iter(runners.values())).module
    network = next(m for m in first.modules() if type(m).__name__ == NETWORK_CLASSES[component])
    for name, t in network.state_dict().items():
        assert torch.equal(t, own[name]), name


_DIT_PROCESS = """
import gc, json, sys
import torch
from t2vserve.profile import load_profile
from t2vserve.serve import stages
args = json.loads(sys.argv[2])
runner = stages.make_runner(load_profile(sys.argv[1]), "dit", "dit", 1,
                            stages.instance_device(args))
gc.collect()
held = sorted({type(o).__name__ for o in gc.get_objects() if isinstance(o, torch.nn.Module)})
print(json.dumps({"held": held, "device": str(runner.device)}))
"""


def test_the_dit_process_holds_no_text_encoder_or_vae(tmp_path):
    """What the dit model's Triton stub runs at initialize, in a process of its own: every
    torch module alive in that process afterwards belongs to the DiT."""
    profile = _torch_profile(tmp_path)
    out = subprocess.run([sys.executable, "-c", _DIT_PROCESS, str(profile.path),
                          json.dumps(_args("CPU", 0))],
                         capture_output=True, text=True, timeout=600, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert "WanTransformer3DModel" in report["held"]
    assert "UMT5EncoderModel" not in report["held"] and "AutoencoderKLWan" not in report["held"]
    assert not any("T5" in name or "Vae" in name or "Decoder3d" in name
                   for name in report["held"]), report["held"]
    assert report["device"] == "cpu"


def test_the_device_comes_from_the_model_args():
    assert stages.instance_device(_args("GPU", 1)) == "cuda:1"
    assert stages.instance_device(_args("GPU", 0)) == "cuda:0"
    assert stages.instance_device(_args("CPU", 0)) == "cpu"
    assert stages.instance_device(_args("MODEL", 0)) == "cpu"
    # ONNX Runtime's CUDA provider on that GPU, not on the default one
    assert stages.onnxruntime_providers("cuda:1") == [
        ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert stages.onnxruntime_providers("cpu") is None


def _manifest(folder, text_len=256, text_dim=32):
    # just the manifest fields rendering reads
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({
        "text_len": text_len, "latent_channels": 48, "preset": "tiny", "weight_hash": "0" * 64,
        "graphs": {"text_encoder": {"outputs": [{"name": "prompt_embeds",
                                                 "shape": ["batch", "text_len", text_dim]}]}}}))


def test_gpus_1_puts_the_dit_instance_on_device_1(tmp_path):
    """gpus: [1] -> the rendered config puts dit's instance on GPU 1 -> Triton's model args
    say GPU 1 -> the stage asks its runners for cuda:1, not a default "cuda". Without that
    GPU (here) the stage refuses to start, naming the device it was given."""
    profile = _torch_profile(tmp_path, gpus=[1])
    _manifest(profile.artifacts)
    repo = render_repository(profile, tmp_path / "repo")
    (group,) = config_of(repo / "dit" / "config.pbtxt").instance_group
    assert group.kind == group.KIND_GPU and list(group.gpus) == [1]
    (loop,) = config_of(repo / "t2v" / "config.pbtxt").instance_group
    assert loop.kind == loop.KIND_GPU and list(loop.gpus) == [1]  # the loop follows the DiT
    device = stages.instance_device(_args("GPU", group.gpus[0]))
    assert device == "cuda:1"
    if torch.cuda.device_count() > 1:
        runner = stages.make_runner(profile, "dit", "dit", 0, device)
        assert runner.device == torch.device("cuda:1")
        assert next(runner.module.parameters()).device == torch.device("cuda:1")
    else:
        with pytest.raises(ValueError, match=r"placed on cuda:1 .* torch sees"):
            stages.make_runner(profile, "dit", "dit", 0, device)
    # the torch CUDA runner is handed that device
    runner = stages._torch_runners(_torch_profile(tmp_path / "cpu"), "dit")["dit"]
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:1' requested"):
            stages._on_device(profile, "dit", runner, device)


@pytest.mark.parametrize("name", ["h100-480p", "h100-720p"])
def test_the_h100_profiles_put_every_stage_on_gpu_0(name, tmp_path):
    art = tmp_path / "artifacts"
    _manifest(art, text_len=512, text_dim=4096)
    data = yaml.safe_load(open(f"profiles/{name}.yaml"))
    data["model"]["artifacts"] = str(art)
    path = tmp_path / "profiles" / f"{name}.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data))
    repo = render_repository(load_profile(path), tmp_path / "repo")
    # t2v's denoising loop sits on the DiT's GPU, so its per-step tensors stay there
    for model in ("text_encoder", "dit", "vae_decoder", "t2v"):
        (group,) = config_of(repo / model / "config.pbtxt").instance_group
        assert group.kind == group.KIND_GPU and list(group.gpus) == [0], model
    (group,) = config_of(repo / "video_encoder" / "config.pbtxt").instance_group
    assert group.kind == group.KIND_CPU  # x264 runs on the host
    for model in ("text_encoder", "dit", "vae_decoder"):  # GPU inputs taken as they are
        assert 'FORCE_CPU_ONLY_INPUT_TENSORS" value: { string_value: "no"' in \
            (repo / model / "config.pbtxt").read_text(), model


def test_the_old_device_key_is_refused_with_the_new_one_named(tmp_path):
    profile = _torch_profile(tmp_path)
    profile.data["components"]["dit"]["device"] = "cuda"
    with pytest.raises(ValueError, match=r"components.dit.gpus: \[0\]"):
        stages.make_runner(profile, "dit", "dit")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_0_instance_runs_its_network_on_gpu_0_in_its_precision(tmp_path):
    profile = _torch_profile(tmp_path, gpus=[0])
    profile.data["components"]["dit"]["precision"] = "bf16"
    runner = stages.make_runner(profile, "dit", "dit", 0, stages.instance_device(_args("GPU", 0)))
    assert runner.device == torch.device("cuda:0")
    assert {p.dtype for p in runner.module.parameters()} == {torch.bfloat16}
