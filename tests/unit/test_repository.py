"""`t2vserve repo build`: every placeholder filled from the profile, a missing key an error."""

import json
import re

import pytest
import yaml

from t2vserve.profile import ProfileError, load_profile
from t2vserve.serve.repository import MODELS, RenderError, render, render_repository

PROJECT_PROFILE = "profiles/cpu-tiny.yaml"


@pytest.fixture
def profile(tmp_path):
    """cpu-tiny pointed at a folder holding just the manifest fields rendering reads."""
    art = tmp_path / "artifacts"
    art.mkdir()
    (art / "manifest.json").write_text(json.dumps({
        "text_len": 256, "latent_channels": 48, "preset": "tiny", "weight_hash": "ab" * 32,
        "graphs": {"text_encoder": {"outputs": [{"name": "prompt_embeds",
                                                 "shape": ["batch", "text_len", 32]}]}}}))
    data = yaml.safe_load(open(PROJECT_PROFILE))
    data["model"]["artifacts"] = str(art)
    path = tmp_path / "profiles" / "p.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data))
    return load_profile(path)


def test_renders_every_model_with_no_placeholder_left(profile, tmp_path):
    repo = render_repository(profile, tmp_path / "repo")
    for model in MODELS:
        text = (repo / model / "config.pbtxt").read_text()
        assert "${" not in text, model
        assert f'name: "{model}"' in text
    dit = (repo / "dit" / "config.pbtxt").read_text()
    assert "max_batch_size: 16" in dit and "max_queue_delay_microseconds: 4000" in dit
    assert "dims: [ 256, 32 ]" in dit
    assert re.search(r"count: 8 ", (repo / "t2v" / "config.pbtxt").read_text())
    assert "response_cache { enable: true }" in (repo / "text_encoder" / "config.pbtxt").read_text()
    # the models read a copy of the profile inside the repository that keeps its root
    copy = repo.resolve() / "profile.yaml"
    assert f'string_value: "{copy}"' in (repo / "t2v" / "config.pbtxt").read_text()
    served = load_profile(copy)
    assert served.data == profile.data and served.artifacts == profile.artifacts
    assert (repo / "t2v" / "1" / "model.py").exists()


def test_a_missing_key_is_an_error_not_a_blank():
    with pytest.raises(RenderError, match=r"no value for \$\{models.dit.typo\}"):
        render("max_batch_size: ${models.dit.typo}", {"models.dit.max_batch_size": "8"})
    assert render("a: ${x}", {"x": "1"}) == "a: 1"


def test_profile_missing_keys_are_named(tmp_path):
    data = yaml.safe_load(open(PROJECT_PROFILE))
    del data["models"]["dit"]
    del data["queue"]["max_queue_size"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match="models.dit.*queue.max_queue_size"):
        load_profile(path)


def test_prompt_token_limit_cannot_exceed_the_model(profile, tmp_path):
    profile.data["limits"]["prompt_tokens"] = 512
    with pytest.raises(RenderError, match="prompt_tokens 512 exceeds"):
        render_repository(profile, tmp_path / "repo")


def test_perf_analyzer_names_the_rendered_version_of_every_model(profile, tmp_path):
    """Versions left unnamed, perf_analyzer guesses each composing model's from its stats and
    fails a window that saw no call to it (CI saw it at concurrency 4); named, they must be
    the versions the repository actually holds."""
    from t2vserve.perf.analyzer import COMPOSING_MODELS, command

    repo = render_repository(profile, tmp_path / "repo")
    args = command("127.0.0.1:8001", tmp_path / "input.json", concurrency=4)
    top = args[args.index("-m") + 1], args[args.index("-x") + 1]
    composing = [m.split(":") for m in args[args.index("--bls-composing-models") + 1].split(",")]
    assert [name for name, _ in composing] == list(COMPOSING_MODELS)
    for name, version in [top, *composing]:
        assert (repo / name / version).is_dir(), (name, version)
    with pytest.raises(ValueError, match="exactly one"):
        command("127.0.0.1:8001", tmp_path / "input.json")


def config_of(path):
    """A rendered config.pbtxt parsed as Triton's ModelConfig (so it is valid config too)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_a_component_with_gpus_gets_gpu_instances_on_those_gpus(profile, tmp_path):
    """components.dit.gpus: [1] -> dit's instances are KIND_GPU on GPU 1, its inputs may
    arrive as GPU tensors; the components without gpus render as on CPU profiles."""
    profile.data["components"]["dit"]["gpus"] = [1]
    profile.data["models"]["dit"]["instances"] = 2
    repo = render_repository(profile, tmp_path / "repo")
    dit = config_of(repo / "dit" / "config.pbtxt")
    (group,) = dit.instance_group
    assert group.kind == group.KIND_GPU and list(group.gpus) == [1] and group.count == 2
    assert dit.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
    for model in ("text_encoder", "vae_decoder"):
        config = config_of(repo / model / "config.pbtxt")
        assert [g.kind for g in config.instance_group] == [group.KIND_CPU]
        assert list(config.instance_group[0].gpus) == []
        assert "FORCE_CPU_ONLY_INPUT_TENSORS" not in config.parameters


def test_cpu_profiles_render_the_instance_groups_as_before(profile, tmp_path):
    repo = render_repository(profile, tmp_path / "repo")
    for model, count in (("text_encoder", 1), ("dit", 1), ("vae_decoder", 2)):
        text = (repo / model / "config.pbtxt").read_text()
        assert f"instance_group [ {{ kind: KIND_CPU count: {count} }} ]\n" in text, model
        assert text.endswith('/profile.yaml" } }\n'), model


@pytest.mark.parametrize("gpus", [[], [-1], [0, 0], "0", [1.5], [True]])
def test_bad_gpu_lists_are_named(profile, tmp_path, gpus):
    profile.data["components"]["vae_decoder"]["gpus"] = gpus
    with pytest.raises(RenderError, match=r"components.vae_decoder.gpus must be a non-empty "
                                          r"list of distinct GPU ids \(integers >= 0\)"):
        render_repository(profile, tmp_path / "repo")


def test_t2v_and_t2v_stream_publish_model_ids_and_request_defaults(profile, tmp_path):
    """The jobs service reads these to hash a request's content before generating: the
    model id per variant (the default first) and what omitted inputs become."""
    from t2vserve.schema import GenerationRequest

    profile.data["defaults"]["negative_prompt"] = '模糊, "blurry" \\ low quality'
    repo = render_repository(profile, tmp_path / "repo")
    t2v = config_of(repo / "t2v" / "config.pbtxt")
    stream = config_of(repo / "t2v_stream" / "config.pbtxt")
    for config in (t2v, stream):
        assert json.loads(config.parameters["model_ids"].string_value) == {
            "base": "tiny@" + "ab" * 6}
        defaults = json.loads(config.parameters["request_defaults"].string_value)
        assert defaults == profile.defaults
        assert defaults["negative_prompt"] == '模糊, "blurry" \\ low quality'
    # the streaming twin: decoupled, same inputs, outputs plus progress, same instances
    assert stream.model_transaction_policy.decoupled and not t2v.model_transaction_policy.decoupled
    assert list(stream.input) == list(t2v.input)
    assert [o.name for o in stream.output] == [o.name for o in t2v.output] + ["progress"]
    # placed as t2v; its own count (models.t2v_stream.instances), else t2v's
    assert [(g.kind, g.count) for g in stream.instance_group] == \
        [(t2v.instance_group[0].kind, profile.stream_instances())]
    assert profile.stream_instances() == 2 and t2v.instance_group[0].count == 8
    del profile.data["models"]["t2v_stream"]
    assert profile.stream_instances() == 8
    assert stream.dynamic_batching == t2v.dynamic_batching
    # without a negative prompt in the profile, the schema's default is what is served
    del profile.data["defaults"]["negative_prompt"]
    repo = render_repository(profile, tmp_path / "repo2")
    defaults = json.loads(config_of(repo / "t2v" / "config.pbtxt")
                          .parameters["request_defaults"].string_value)
    assert defaults["negative_prompt"] == GenerationRequest.negative_prompt
