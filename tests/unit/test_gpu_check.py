"""perf.gpu_check without a server: the budget check and the generated profiles."""

import time

import pytest
import yaml

from t2vserve.perf.gpu_check import PLANS, Phases, profile_data
from t2vserve.profile import load_profile


def test_phases_name_the_one_that_ran_over_and_record_failures():
    phases = Phases({"quick": 60.0, "slow": 0.0})
    with phases.run("quick"):
        pass
    with phases.run("slow"):
        time.sleep(0.2)
    with phases.run("optional", fatal=False):
        raise RuntimeError("no GPU memory left")
    with pytest.raises(ValueError), phases.run("needed"):
        raise ValueError("server did not start")
    assert [(p.name, p.ok) for p in phases.done] == \
        [("quick", True), ("slow", True), ("optional", False), ("needed", False)]
    assert phases.done[2].error == "RuntimeError: no GPU memory left"
    over = phases.over()
    assert len(over) == 1 and over[0].startswith("slow took")


@pytest.mark.parametrize("preset,device", [("wan2.2-ti2v-5b", "cuda"), ("tiny", "cpu")])
def test_profile_admits_exactly_the_planned_requests(tmp_path, preset, device):
    data = profile_data(preset, device, tmp_path / "artifacts", [18000, 18001, 18002, 18003])
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    profile = load_profile(path)
    assert {c["runtime"] for c in data["components"].values()} == {"torch"}
    placed = [c.get("gpus") for c in data["components"].values()]
    assert placed == ([[0]] * 3 if device == "cuda" else [None] * 3)
    planned = {(w, h) for w, h, _, _ in PLANS[preset]["requests"]}
    assert planned <= set(profile.limits.admitted_sizes())
    assert set(profile.limits.admitted_sizes()) == {tuple(s) for s in PLANS[preset]["sizes"]}
    w, h, f, steps = PLANS[preset]["requests"][0]  # perf_analyzer's workload
    assert (profile.defaults["width"], profile.defaults["height"],
            profile.defaults["num_frames"], profile.defaults["steps"]) == (w, h, f, steps)
    assert profile.limits.largest_clip()[2] == max(f for *_, f, _ in PLANS[preset]["requests"])
    assert profile.model("t2v")["instances"] >= 2  # concurrency 2 runs two loops at once


def test_nvidia_smi_compute_apps_rows_and_unreadable_ones():
    from t2vserve.perf.stage_memory import compute_apps

    rows, unreadable = compute_apps("4242, 10240\n4243, [N/A]\n\n17, 512\n")
    assert rows == [(4242, 10240.0), (17, 512.0)]
    assert unreadable == ["4243, [N/A]"]


def test_stage_processes_of_a_process_without_stubs_is_empty():
    import os

    from t2vserve.perf.stage_memory import memory_by_stage, stage_processes

    assert stage_processes(os.getpid()) == {}
    mem = memory_by_stage(os.getpid(), "cpu")
    assert mem == {"stage_processes": {}, "gpu": "no GPU: the check ran with --device cpu"}
