"""The Helm chart means what it says: deploy-check passes (and fails on an invalid object),
/dev/shm and the grace period follow the profile as `serve` computes them, the schema
refuses a wrong type, the KEDA Redis trigger watches the list Dramatiq really fills,
`t2vserve size --emit-values` output renders into valid objects, and every container's
command line is one the CLI accepts."""

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import yaml

from t2vserve.jobs import redis_server
from t2vserve.jobs.worker import JobQueue, make_broker
from t2vserve.perf.chart_values import chart_values, write_values
from t2vserve.profile import load_profile
from t2vserve.serve.server import free_ports, shm_requirement

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "t2vserve"
CHECK = ROOT / "deploy" / "check.py"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (make setup installs it)")
    return str(path)


def _load_check():
    spec = importlib.util.spec_from_file_location("deploy_check", CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _template(*args: str, chart: Path = CHART) -> list[dict]:
    proc = subprocess.run([_tool("helm"), "template", "t2v", str(chart), "--namespace", "t2v", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _one(objects: list[dict], kind: str, name: str = "t2v-t2vserve") -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name} rendered {len(found)} times"
    return found[0]


def test_deploy_check_passes():
    for name in ("helm", "kubernetes-validate", "node"):
        _tool(name)
    proc = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in ("ok    helm lint --strict (default)", "ok    kubernetes-validate --strict 1.30.0 (keda)",
                 "ok    kubernetes-validate --strict 1.33.0 (hpa)", "ok    KEDA objects"):
        assert line in proc.stdout, proc.stdout


def test_deploy_check_fails_on_an_invalid_object(tmp_path):
    for name in ("helm", "kubernetes-validate", "node"):
        _tool(name)
    chart = tmp_path / "t2vserve"
    shutil.copytree(CHART, chart)
    deployment = chart / "templates" / "deployment.yaml"
    text = deployment.read_text()
    assert "rollingUpdate: {maxSurge: 1, maxUnavailable: 0}" in text
    deployment.write_text(text.replace("maxUnavailable: 0}", "maxUnavailable: 0, maxSurprise: 1}"))
    # a kind kubernetes-validate has no schema for must fail too, not just warn
    pdb = chart / "templates" / "pdb.yaml"
    pdb.write_text(pdb.read_text().replace("apiVersion: policy/v1", "apiVersion: policy/v9"))
    proc = subprocess.run([sys.executable, str(CHECK), "--chart", str(chart), "--chart-only"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stdout
    assert "FAIL  kubernetes-validate --strict 1.30.0 (default)" in proc.stdout
    assert "'maxSurprise' was unexpected" in proc.stdout
    assert "kind PodDisruptionBudget with api version policy/v9" in proc.stdout


def test_shm_and_grace_period_follow_the_profile(tmp_path):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    # the chart's default profile is the shipped h100-720p, not a drifting copy
    assert values["profile"] == yaml.safe_load((ROOT / "profiles" / "h100-720p.yaml").read_text())
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(values["profile"]))
    need, _ = shm_requirement(load_profile(path))
    objects = _template()
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": str(need)}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "shm")
    assert mount["mountPath"] == "/dev/shm"
    exit_timeout = values["profile"]["server"]["exit_timeout_s"]
    sleep = int(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] >= exit_timeout + sleep
    # the profile `serve` reads is the values' one, with its paths rooted in the model store
    profile = yaml.safe_load(_one(objects, "ConfigMap", "t2v-t2vserve-profile")["data"]["profile.yaml"])
    assert profile.pop("root") == values["modelStore"]["mountPath"]
    assert profile == values["profile"]


def test_a_wrong_type_or_a_short_grace_period_fails_the_render():
    helm = _tool("helm")
    proc = subprocess.run([helm, "template", "t2v", str(CHART), "--set", "replicas=two"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "replicas: Invalid type. Expected: integer, given: string" in proc.stderr
    proc = subprocess.run([helm, "template", "t2v", str(CHART), "--set", "autoscaling.mode=kedah"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert 'autoscaling.mode must be one of the following: "none", "keda", "hpa"' in proc.stderr
    proc = subprocess.run([helm, "template", "t2v", str(CHART), "--set",
                           "terminationGracePeriodSeconds=300"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "terminationGracePeriodSeconds 300 is shorter than" in proc.stderr


def test_autoscaling_query_is_the_one_promtool_tests():
    """deploy/prometheus/tests/autoscaling.yaml checks the queue-time query on series shaped
    like a real scrape; the chart must render that expression, not a look-alike."""
    tests = ROOT / "deploy" / "prometheus" / "tests" / "autoscaling.yaml"
    if not tests.exists():
        pytest.skip(f"{tests.relative_to(ROOT)} is not there")
    tested = {case["expr"].strip() for group in yaml.safe_load(tests.read_text())["tests"]
              for case in group.get("promql_expr_test", [])}
    scaled = _one(_template("--set", "autoscaling.mode=keda"), "ScaledObject")
    query = next(t for t in scaled["spec"]["triggers"] if t["name"] == "queue-time-ms")["metadata"]["query"]
    assert query in tested, f"{query}\nnot among the tested expressions:\n" + "\n".join(sorted(tested))


def test_keda_redis_trigger_watches_dramatiqs_list(tmp_path):
    """Enqueue through the broker the API uses; the lists the chart's triggers name fill."""
    if shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists():
        pytest.skip("redis-server is not installed (make setup installs it)")
    objects = _template("--set", "autoscaling.mode=keda", "--set", "jobs.enabled=true")
    worker = _one(objects, "ScaledObject", "t2v-t2vserve-jobs-worker")
    lists = {t["name"]: t["metadata"]["listName"] for t in worker["spec"]["triggers"]
             if t["type"] == "redis"}
    assert set(lists) == {"jobs-videos-high", "jobs-videos"}
    server = _one(objects, "ScaledObject")
    assert {t["metadata"]["listName"] for t in server["spec"]["triggers"] if t["type"] == "redis"} \
        == set(lists.values())
    (port,) = free_ports(1)
    proc = redis_server.start(tmp_path / "redis", port)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        queue = JobQueue(make_broker(url), run=lambda job_id: None)
        queue.enqueue("job-normal", "normal")
        queue.enqueue("job-high-1", "high")
        queue.enqueue("job-high-2", "high")
        r = redis.Redis.from_url(url)
        assert r.llen(lists["jobs-videos"]) == 1
        assert r.llen(lists["jobs-videos-high"]) == 2
    finally:
        proc.terminate()
        proc.wait(10)


def test_size_emit_values_renders_valid_objects_with_the_sized_counts(tmp_path):
    """`t2vserve size ... --emit-values` (issue 23, Show 5)."""
    for name in ("helm", "kubernetes-validate", "node"):
        _tool(name)
    check = _load_check()
    out = tmp_path / "values-peak.yaml"
    proc = subprocess.run(
        [str(BIN / "t2vserve"), "size", "--gpu", "h100-sxm", "--mode", "base", "--peak-per-hour",
         "200", "--p95-slo", "400", "--profile", "profiles/h100-480p.yaml", "--out",
         str(tmp_path / "sizing.md"), "--emit-values", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    servers = int(re.search(r"^servers: (\d+) ", proc.stdout, re.M).group(1))
    assert f"chart values: {out}" in proc.stdout
    values = yaml.safe_load(out.read_text())
    objects = _template("-f", str(out))
    deployment = _one(objects, "Deployment")["spec"]
    assert deployment.get("replicas") is None  # the autoscaler's
    pod = deployment["template"]["spec"]
    profile = load_profile(ROOT / "profiles" / "h100-480p.yaml")
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["sizeLimit"] == str(shm_requirement(profile)[0])
    assert pod["terminationGracePeriodSeconds"] >= profile.data["server"]["exit_timeout_s"]
    scaled = _one(objects, "ScaledObject")["spec"]
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (1, servers)
    queue_time = next(t for t in scaled["triggers"] if t["name"] == "queue-time-ms")
    assert float(queue_time["metadata"]["threshold"]) == values["autoscaling"]["queueTimeTargetMs"] >= 1000
    assert 'namespace="t2v"' in queue_time["metadata"]["query"]
    checks = check.Checks()
    manifest = yaml.safe_dump_all(objects)
    for version in check.KUBERNETES_VERSIONS:
        check.check_kubernetes(checks, _tool("kubernetes-validate"), manifest, version, "emitted")
    check.check_keda(checks, _tool("node"), [o for o in objects if o["kind"] == "ScaledObject"])
    assert checks.failed == 0
    # a count without autoscaling is the replica count
    fixed = write_values(chart_values(profile, 7, mode="none"), tmp_path / "fixed.yaml")
    assert _one(_template("-f", str(fixed)), "Deployment")["spec"]["replicas"] == 7


def test_chart_values_refuse_what_the_chart_cannot_deploy():
    profile = load_profile(ROOT / "profiles" / "h100-720p.yaml")
    with pytest.raises(ValueError, match="fleet must be a Sizing with servers >= 1"):
        chart_values(profile, 0)
    with pytest.raises(ValueError, match="min_replicas must be an integer from 1 to the fleet's 3"):
        chart_values(profile, 3, min_replicas=4)
    with pytest.raises(ValueError, match="mode must be one of none, keda, hpa"):
        chart_values(profile, 3, mode="vpa")


def test_every_container_command_is_one_the_cli_accepts_and_the_profile_loads(tmp_path):
    """The chart's command lines are t2vserve's own: each container's command + args (KEDA
    values: server, jobs API, jobs worker) parses with the real CLI parser, and the profile
    ConfigMap is a profile `serve` loads, with the shm size the Deployment gives it."""
    from t2vserve.cli import build_parser

    import argparse

    def exact(p):  # argparse would take --rate-per-min for --rate-per-minute
        p.allow_abbrev = False
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    exact(sub)
        return p

    objects = _template("-f", str(CHART / "ci" / "keda-values.yaml"))
    parser = exact(build_parser())
    seen = {}
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        for c in obj["spec"]["template"]["spec"]["containers"]:
            command, args = c["command"], c.get("args", [])
            if command[:2] == ["sh", "-c"]:  # the server: `exec t2vserve serve "$@"`
                assert 'exec t2vserve serve "$@"' in command[2]
                argv = ["serve", *args]
            else:
                assert command[0] == "t2vserve", command
                argv = [*command[1:], *args]
            parsed = parser.parse_args(argv)  # SystemExit(2) on a flag the CLI does not have
            seen[argv[0]] = parsed
    assert set(seen) == {"serve", "jobs", "jobs-worker"}, set(seen)

    config = _one(objects, "ConfigMap", "t2v-t2vserve-profile")
    [(name, text)] = config["data"].items()
    path = tmp_path / name
    path.write_text(text)
    profile = load_profile(path)
    shm = _one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    [limit] = [v["emptyDir"]["sizeLimit"] for v in shm if v["name"] == "shm"]
    assert int(limit) == shm_requirement(profile)[0]
