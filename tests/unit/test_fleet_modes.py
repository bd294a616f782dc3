"""Reading DiT forwards per video from a measured result, and the schedules built from them."""

import pytest

from t2vserve.perf import fleet_modes as fm


def test_the_table_forms_and_kinds():
    rows = fm.read_measured({"rows": [
        {"label": "base 20", "mode": "base", "steps": 20, "dit_forwards": 40},
        {"name": "interval", "mode": "base", "guidance_interval": [0, 0.5], "steps": 20,
         "dit_forwards": 30},
        {"name": "cache", "mode": "base", "cache_threshold": 0.2, "steps": 20, "dit_forwards": 18.5},
        {"name": "student", "mode": "distilled", "steps": 4, "dit_forwards": 4}]}, "t.json")
    assert [(m.name, m.kind, m.steps, m.dit_forwards) for m in rows] == [
        ("base 20", "base", 20, 40.0), ("interval", "interval", 20, 30.0),
        ("cache", "cached", 20, 18.5), ("student", "distilled", 4, 4.0)]
    mapping = fm.read_measured({"modes": {"c": {"mode": "cached", "steps": 8, "dit_forwards": 9}}},
                               "t.json")
    assert mapping == [fm.MeasuredMode("c", "cached", 8, 9.0)]
    # a cached entry with no base at its steps is compared with steps x 2 (the base with CFG)
    cached = fm.schedules(["cached"], steps=50, measured=mapping, measured_from="t.json")[0]
    assert cached.forwards == pytest.approx(100 / (16 / 9))
    # the interval entry is read, not used: base stays steps x 2
    assert fm.schedules(["base"], steps=20, measured=rows)[0].forwards == 40


@pytest.mark.parametrize("doc, message", [
    ({"modes": [{"name": "a", "steps": 8}]}, "t.json: entry 'a' needs dit_forwards (or dit_forwards_mean) > 0, got None"),
    ({"modes": [{"name": "a", "dit_forwards": 8}]},
     "t.json: entry 'a' needs steps, a positive int, got None"),
    ({"modes": [{"name": "a", "mode": "turbo", "steps": 8, "dit_forwards": 8}]},
     "t.json: entry 'a' has mode 'turbo'; known: base, cached, cache, interval"),
    ({"modes": []}, "t.json has no DiT forwards per video: give a sampling table"),
    ({"kind": "t2vserve.perf.run", "levels": []}, "a `perf run` result records no DiT forwards"),
])
def test_bad_results_name_the_keys(doc, message):
    with pytest.raises(ValueError) as e:
        fm.read_measured(doc, "t.json")
    assert message in str(e.value)


def test_unknown_mode_and_defaults():
    with pytest.raises(ValueError, match="^mode must be one of base, cached, distilled, got 'x'$"):
        fm.schedules(["x"])
    base, cached, few = fm.schedules()
    assert (base.forwards, cached.forwards, few.forwards) == (100, 50, 4)
    assert "assumed 2x" in cached.basis and few.prompts == 1


# the shape `t2vserve.perf.sampling_table` writes (sampling-<date>-<host>.json), cut down
TABLE = {"kind": "t2vserve.perf.sampling_table", "reference": "base 50", "rows": [
    {"row": "base 50", "variant": "base", "mode": "base", "steps": 50, "cache": None,
     "guidance_interval": None, "dit_forwards_mean": 100.0},
    {"row": "base 8", "variant": "base", "mode": "base", "steps": 8, "cache": None,
     "guidance_interval": None, "dit_forwards_mean": 16.0},
    {"row": "cache-lo 50", "variant": "cache-lo", "mode": "base", "steps": 50,
     "cache": {"threshold": 0.1, "max_skips": 2}, "guidance_interval": None,
     "dit_forwards_mean": 62.5},
    {"row": "cache-hi 50", "variant": "cache-hi", "mode": "base", "steps": 50,
     "cache": {"threshold": 0.5, "max_skips": 3}, "guidance_interval": None,
     "dit_forwards_mean": 41.25},
    {"row": "interval 50", "variant": "interval", "mode": "base", "steps": 50, "cache": None,
     "guidance_interval": [0.0, 0.5], "dit_forwards_mean": 75.0},
    {"row": "distilled 4", "variant": "distilled", "mode": "few_step", "steps": 4,
     "cache": None, "guidance_interval": None, "dit_forwards_mean": 4.0}],
    "targets": [{"target": "a step cache ...", "met": True, "by": "cache-hi 50"},
                {"target": "the distilled student ...", "met": False, "by": None}]}


def test_a_sampling_table_gives_the_cache_that_met_its_target():
    rows = fm.read_measured(TABLE, "sampling.json")
    assert [m.kind for m in rows] == ["base", "base", "cached", "cached", "interval", "distilled"]
    base, cached, few = fm.schedules(measured=rows, measured_from="sampling.json")
    assert base.forwards == 100 and few.forwards == 4
    assert cached.forwards == pytest.approx(41.25)  # 100 / (100 / 41.25) at 50 steps
    assert "measured: cache-hi 50 spent 41.25 forwards" in cached.basis
    assert "met its quality target" in cached.basis
    lo = fm.schedules(["cached"], steps=20, measured=rows, cache_setting="cache-lo 50")[0]
    assert lo.forwards == pytest.approx(40 / 1.6)
    # without a met target the choice is the caller's
    unmet = {**TABLE, "targets": [{"met": False, "by": None}]}
    with pytest.raises(ValueError, match="pick one with --cache-setting: cache-lo 50, cache-hi 50"):
        fm.schedules(measured=fm.read_measured(unmet, "s.json"), measured_from="s.json")
