"""deploy/prometheus: rule and test series names come from real scrapes, and promtool passes.

The fixtures were captured from a running tritonserver 2.51 and the supervisor (see their
headers); a metric renamed in either, or a typo in a rule, fails here rather than in a
dashboard that silently shows nothing.
"""

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
SCRAPES = [PROMETHEUS / "tests" / name for name in
           ("triton-2.51-metrics.txt", "triton-2.51-summary-metrics.txt", "supervisor-metrics.txt")]
# added by Kubernetes/Prometheus scraping, never by the servers
SCRAPE_LABELS = {"namespace", "pod", "job", "instance"}
# our metrics only: up, recorded series and PromQL functions are not in a scrape
METRIC = re.compile(r"(?<![\w:])((?:nv|t2vserve)_\w+)(?![\w:])")
SELECTOR = re.compile(r"(?<![\w:])((?:nv|t2vserve)_\w+)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def scraped() -> dict[str, dict[str, set[str]]]:
    """metric name -> label name -> values seen; a family declared without samples maps to None."""
    metrics: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    declared = set()
    for path in SCRAPES:
        for line in path.read_text().splitlines():
            if line.startswith("# TYPE "):
                name, kind = line.split()[2:4]
                declared |= {name, name + "_count", name + "_sum"} if kind == "summary" else {name}
            elif line and not line.startswith("#"):
                name, _, rest = line.partition("{")
                for label, _, value in MATCHER.findall(rest.rpartition("}")[0]):
                    metrics[name.split()[0]][label].add(value)
                metrics[name.split()[0]]
    return {**metrics, **{name: None for name in declared - metrics.keys()}}


def rule_exprs() -> list[str]:
    rules = yaml.safe_load((PROMETHEUS / "rules.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    for path in (PROMETHEUS / "tests").glob("*.yaml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            exprs += [t["expr"] for t in test.get("promql_expr_test", [])]
    return exprs


def test_rules_use_only_scraped_names_and_label_values():
    metrics = scraped()
    assert "nv_inference_queue_duration_us" in metrics  # the fixtures parsed at all
    exprs = rule_exprs()
    used = {name for e in exprs for name in METRIC.findall(e)}
    assert used, "no metric names found in the rules"
    assert sorted(used - metrics.keys()) == []
    for expr in exprs:
        for name, matchers in SELECTOR.findall(expr):
            for label, op, value in MATCHER.findall(matchers):
                if label in SCRAPE_LABELS or metrics[name] is None:
                    continue
                assert label in metrics[name], f"{name} has no label {label!r}: {expr}"
                if op in ("=", "=~"):
                    wanted = set(value.split("|")) if op == "=~" else {value}
                    assert wanted <= metrics[name][label], \
                        f"{name}{{{label}}} never takes {sorted(wanted - metrics[name][label])}"


def test_test_series_are_shaped_like_the_scrape():
    """Synthetic series: a real name, and exactly the real labels plus scraping's."""
    metrics = scraped()
    for path in (PROMETHEUS / "tests").glob("*.yaml"):
        for test in yaml.safe_load(path.read_text())["tests"]:
            for s in test.get("input_series", []):
                name, _, rest = s["series"].partition("{")
                labels = {label for label, _, _ in MATCHER.findall(rest)} - SCRAPE_LABELS
                if name == "up":
                    continue
                assert name in metrics, f"{path.name}: {name} is not in any captured scrape"
                if metrics[name] is None:
                    continue  # declared without a sample yet (reload failures): name only
                real = set(metrics[name]) - {"quantile"}
                assert labels - {"quantile"} == real, \
                    f"{path.name}: {s['series']} vs {sorted(real)}"


def test_promtool_checks_and_tests_pass():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    rules = sorted(map(str, PROMETHEUS.glob("*.yaml")))
    check = subprocess.run([promtool, "check", "rules", *rules], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = sorted(map(str, (PROMETHEUS / "tests").glob("*.yaml")))
    assert len(tests) >= 2
    run = subprocess.run([promtool, "test", "rules", *tests], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
