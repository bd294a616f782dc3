"""Model variants through the served stack: a step-cached and a base request at different
step counts share dit's batches and still give exactly the clips each gives alone; a
few-step variant's contract; the shipped distilled student (a LoRA, its own DiT model) end
to end; an unknown variant."""

import concurrent.futures
import json

import pytest
import yaml

from t2vserve.client import InvalidRequest, T2VClient
from t2vserve.export.variants import ensure_calibrations, ensure_variants
from t2vserve.sampling import ASSETS
from t2vserve.profile import load_profile
from t2vserve.serve.repository import render_repository
from t2vserve.serve.server import ServerConfig, start, stop, wait_ready

from .conftest import PROJECT, free_ports

VARIANTS = {
    "base": {},
    "cached": {"cache": {"threshold": 0.5, "max_skips": 2}},
    "few": {"sampling": {"mode": "few_step", "steps": 4, "sigmas": [1.0, 0.75, 0.5, 0.25, 0.0],
                         "guidance_scale": 1.0}},
    "distilled": {"lora": ["asset:tiny-distilled/lora.safetensors"],
                  "sampling": "asset:tiny-distilled/sampling.json"},
}


@pytest.fixture(scope="module")
def url(tiny_artifacts, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("variants")
    data = yaml.safe_load((PROJECT / "profiles" / "cpu-tiny.yaml").read_text())
    data["model"]["artifacts"] = str(tiny_artifacts)
    data["variants"] = VARIANTS
    # a long batching window, so two requests' concurrent dit calls surely merge
    data["models"]["dit"].update(max_queue_delay_us=200000, max_batch_size=4)
    path = tmp / "profiles" / "variants.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False))  # order: default first
    profile = load_profile(path)
    ensure_variants(profile)  # what `serve` does: the student's DiT, its LoRA fused
    ensure_calibrations(profile)  # and a cache variant's curve
    repo = render_repository(profile, tmp / "repo")
    http, grpc, metrics = free_ports(3)
    cfg = ServerConfig.from_profile(profile, repo, http_port=http, grpc_port=grpc,
                                    metrics_port=metrics)
    proc = start(cfg, tmp / "tritonserver.log")
    try:
        wait_ready(cfg, proc)
    except Exception:
        stop(proc)
        raise RuntimeError((tmp / "tritonserver.log").read_text()[-6000:])
    yield f"127.0.0.1:{grpc}"
    stop(proc)


def _dit_counts(url, model="dit"):
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(url)
    s = c.get_inference_statistics(model_name=model, as_json=True)["model_stats"][0]
    c.close()
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


REQUESTS = [dict(prompt="a blue bottle on a grey background", variant="cached", steps=12, seed=1),
            dict(prompt="一个红色的杯子在木桌上", variant="base", steps=7, seed=2)]


def _generate(url, r):
    with T2VClient(url) as client:
        return client.generate(r["prompt"], width=64, height=64, num_frames=5, steps=r["steps"],
                               seed=r["seed"], model_variant=r["variant"])


def test_cached_and_base_requests_batched_together_equal_each_alone(url):
    alone = [_generate(url, r) for r in REQUESTS]
    cached = alone[0].info
    assert cached["variant"] == "cached" and cached["sampling"]["mode"] == "base"
    assert cached["sampling"]["cached_steps"]  # the cache served some steps
    assert cached["sampling"]["dit_forwards"] == 2 * (12 - len(cached["sampling"]["cached_steps"]))
    assert alone[1].info["sampling"]["dit_forwards"] == 14 and alone[1].info["variant"] == "base"
    before = _dit_counts(url)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda r: _generate(url, r), REQUESTS))
    after = _dit_counts(url)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 2 * sum(v.info["dit_calls"] for v in together)  # CFG pairs
    assert executions < sum(v.info["dit_calls"] for v in together)  # calls shared batches
    for a, b in zip(alone, together):
        assert a.mp4 == b.mp4 and a.info["sampling"] == b.info["sampling"]


def test_a_few_step_variant_serves_its_steps_and_refuses_others(url):
    video = _generate(url, dict(prompt="a green ball", variant="few", steps=None, seed=3))
    assert video.info["dit_calls"] == 4 and video.info["sampling"]["dit_forwards"] == 4
    assert video.info["sampling"]["timesteps"] == [1000.0, 750.0, 500.0, 250.0]
    assert video.info["request"]["guidance_scale"] == 1.0
    with pytest.raises(InvalidRequest, match=r"samples few-step: exactly 4 steps at "
                                             r"guidance_scale 1 \(no CFG\); got steps=8"):
        _generate(url, dict(prompt="a green ball", variant="few", steps=8, seed=3))
    with pytest.raises(InvalidRequest, match="model_variant must be one of base, cached, few, "
                                             "distilled"):
        _generate(url, dict(prompt="a green ball", variant="turbo", steps=4, seed=3))
    # the server is fine afterwards
    assert _generate(url, dict(prompt="a green ball", variant="base", steps=2, seed=3)).mp4


def test_the_distilled_student_runs_on_its_own_dit(url):
    sampling = json.loads((ASSETS / "tiny-distilled" / "sampling.json").read_text())
    before = _dit_counts(url, "dit_distilled")
    video = _generate(url, dict(prompt="a red cup on a white studio background, still",
                                variant="distilled", steps=None, seed=3))
    assert _dit_counts(url, "dit_distilled")[0] - before[0] == sampling["steps"]
    assert video.info["sampling"]["mode"] == "few_step"
    assert video.info["sampling"]["dit_forwards"] == sampling["steps"]  # no CFG
    base = _generate(url, dict(prompt="a red cup on a white studio background, still",
                               variant="base", steps=4, seed=3))
    assert video.info["model"] != base.info["model"]  # the fused weights' id
    assert video.mp4 != base.mp4


def test_an_ab_batch_keeps_its_assignment_and_each_clip_names_its_variant(url, tmp_path, capsys):
    """Issue 24, Show 3: 20 SKUs split between two variants of one server."""
    from t2vserve.cli import main
    from t2vserve.client.batch import read_manifest
    from t2vserve.client.experiment import assign, parse_split

    catalog = tmp_path / "catalog.jsonl"
    catalog.write_text("".join(json.dumps({"sku": f"SKU-{i:02d}", "prompt": f"product {i}",
                                           "width": 64, "height": 64, "num_frames": 5,
                                           "steps": 1}) + "\n" for i in range(20)))
    out = tmp_path / "out"
    batch = ["batch", str(catalog), "--out-dir", str(out), "--url", url, "--experiment", "show3",
             "--concurrency", "4"]
    assert main([*batch, "--variants", "base=0.5,turbo=0.5"]) == 2
    assert "--variants names turbo; the server serves base, cached, few, distilled" in \
        capsys.readouterr().err
    assert main([*batch, "--variants", "base=0.5,cached=0.5"]) == 0
    with T2VClient(url) as client:
        ids = client.server_info()["model_ids"]
    assert ids["base"] != ids["cached"] and ids["base"].endswith("/base")  # same weights
    split = parse_split("base=0.5,cached=0.5")
    state = read_manifest(out / "manifest.jsonl")
    assert sorted(state) == sorted((f"SKU-{i:02d}", assign("show3", f"SKU-{i:02d}", split))
                                   for i in range(20))
    for (sku, variant), r in state.items():
        assert (r["status"], r["model"], r["served_variant"]) == ("ok", ids[variant], variant)
        assert (out / f"{sku}.{variant}.mp4").stat().st_size == r["bytes"]
    counts = {v: sum(1 for _, x in state if x == v) for v in split}
    assert min(counts.values()) > 0
    lines = (out / "manifest.jsonl").read_text().count("\n")
    capsys.readouterr()
    assert main(batch + ["--variants", "base=0.5,cached=0.5"]) == 0  # the rerun: all done
    assert "20 already done" in capsys.readouterr().out
    assert (out / "manifest.jsonl").read_text().count("\n") == lines
    assert main(["experiment", "report", str(out / "manifest.jsonl"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["variants"]
    assert {r["variant"]: (r["clips"], r["failed"]) for r in rows} == \
        {v: (n, 0) for v, n in counts.items()}
