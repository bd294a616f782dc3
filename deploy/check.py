"""`make deploy-check`: the chart, the Prometheus rules and the Envoy config, checked offline.

helm lint --strict and helm template for the default values and the variants in the chart's
ci/ folder; every rendered object against the Kubernetes 1.30 and 1.33 schemas
(kubernetes-validate --strict); the KEDA objects with @kubernetes-models/keda
(deploy/keda_validate.js); promtool on deploy/prometheus/ and envoy --mode validate on
deploy/envoy/envoy.yaml where those exist. One line per check; exit 1 if any fails.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NODE_MODULES = ROOT / ".venv" / "deploy-tools" / "node_modules"
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")
# custom resources kubernetes-validate has no schema for: KEDA's go to keda_validate.js; the
# Prometheus Operator's have no offline schema here
KEDA_GROUP = "keda.sh/"
UNVALIDATED = {("monitoring.coreos.com/v1", "ServiceMonitor")}


class Checks:
    def __init__(self):
        self.failed = 0

    def result(self, name: str, ok: bool, detail: str = "") -> bool:
        detail = detail.strip()
        if ok:
            print(f"ok    {name}" + (f" ({detail})" if detail else ""))
        else:
            self.failed += 1
            print(f"FAIL  {name}\n" + "\n".join("      " + line for line in detail.splitlines()))
        return ok

    def run(self, name: str, args: list, stdin: str | None = None) -> subprocess.CompletedProcess | None:
        try:
            proc = subprocess.run([str(a) for a in args], input=stdin, capture_output=True,
                                  text=True, timeout=120, cwd=ROOT)
        except subprocess.TimeoutExpired:
            self.result(name, False, "timed out after 120 s")
            return None
        if proc.returncode != 0:
            self.result(name, False, (proc.stderr + proc.stdout)[-3000:])
            return None
        return proc


def tool(name: str) -> str | None:
    """The venv's bin/ first (helm, kubernetes-validate, envoy), then PATH."""
    local = BIN / name
    return str(local) if local.exists() else shutil.which(name)


def require(checks: Checks, name: str) -> str | None:
    path = tool(name)
    if path is None:
        checks.result(name, False, f"{name} not found in {BIN} or on PATH: run `make setup`")
    return path


def rendered_objects(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def check_chart(checks: Checks, chart: Path) -> None:
    helm, validate, node = (require(checks, n) for n in ("helm", "kubernetes-validate", "node"))
    if helm is None:
        return
    variants = {"default": []}
    for values in sorted((chart / "ci").glob("*-values.yaml")):
        variants[values.name.removesuffix("-values.yaml")] = ["-f", values]
    keda_objects = []
    for variant, values in variants.items():
        if not checks.run(f"helm lint --strict ({variant})", [helm, "lint", "--strict", chart, *values]):
            continue
        checks.result(f"helm lint --strict ({variant})", True)
        proc = checks.run(f"helm template ({variant})",
                          [helm, "template", "t2v", chart, "--namespace", "t2v", *values])
        if proc is None:
            continue
        objects = rendered_objects(proc.stdout)
        kinds = sorted({o["kind"] for o in objects})
        checks.result(f"helm template ({variant})", True, f"{len(objects)} objects: {', '.join(kinds)}")
        keda_objects += [o for o in objects if str(o.get("apiVersion", "")).startswith(KEDA_GROUP)]
        for o in objects:
            if (o.get("apiVersion"), o.get("kind")) in UNVALIDATED:
                checks.result(f"{o['kind']}/{o['metadata']['name']} ({variant})", True,
                              "no offline schema: not validated")
        if validate is not None:
            for version in KUBERNETES_VERSIONS:
                check_kubernetes(checks, validate, proc.stdout, version, variant)
    if node is not None and keda_objects:
        check_keda(checks, node, keda_objects)
    elif not keda_objects:
        checks.result("KEDA objects", False, "no variant rendered a ScaledObject")


def check_kubernetes(checks: Checks, validate: str, manifest: str, version: str, variant: str) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(manifest)
        f.flush()
        proc = subprocess.run([validate, "-k", version, "--strict", f.name], capture_output=True,
                              text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).replace(f.name + " ", "").splitlines()
    # a kind without a schema only warns; only the custom resources above may go without,
    # so a mistyped apiVersion cannot pass unchecked
    allowed = [kind for _, kind in UNVALIDATED] + ["ScaledObject"]
    bad = [line for line in lines if line.startswith("ERROR") or (
        "Couldn't find schema" in line and not any(f"kind {k} " in line for k in allowed))]
    if proc.returncode != 0 and not bad:
        bad = lines[-20:]
    passed = sum("passed for resource" in line for line in lines)
    checks.result(f"kubernetes-validate --strict {version} ({variant})", not bad,
                  "\n".join(bad) if bad else f"{passed} objects")


def check_keda(checks: Checks, node: str, objects: list[dict]) -> None:
    name = f"KEDA objects (@kubernetes-models/keda, {len(objects)})"
    if not NODE_MODULES.joinpath("@kubernetes-models", "keda").exists():
        checks.result(name, False, f"@kubernetes-models/keda not in {NODE_MODULES}: run `make setup`")
        return
    proc = checks.run(name, [node, ROOT / "deploy" / "keda_validate.js", NODE_MODULES],
                      stdin=json.dumps(objects))
    if proc is not None:
        checks.result(name, True)


def check_prometheus(checks: Checks) -> None:
    folder = ROOT / "deploy" / "prometheus"
    rules = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
    tests = sorted((folder / "tests").glob("*.yaml")) + sorted((folder / "tests").glob("*.yml"))
    if not rules and not tests:
        print("skip  promtool (no deploy/prometheus/*.yaml)")
        return
    promtool = require(checks, "promtool")
    if promtool is None:
        return
    if rules and checks.run("promtool check rules", [promtool, "check", "rules", *rules]):
        checks.result("promtool check rules", True, f"{len(rules)} files")
    if tests and checks.run("promtool test rules", [promtool, "test", "rules", *tests]):
        checks.result("promtool test rules", True, f"{len(tests)} files")


def check_envoy(checks: Checks) -> None:
    config = ROOT / "deploy" / "envoy" / "envoy.yaml"
    if not config.exists():
        print("skip  envoy (no deploy/envoy/envoy.yaml)")
        return
    envoy = require(checks, "envoy")
    if envoy and checks.run("envoy --mode validate", [envoy, "--mode", "validate", "-c", config,
                                                      "--log-level", "error"]):
        checks.result("envoy --mode validate", True, str(config.relative_to(ROOT)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chart", type=Path, default=ROOT / "deploy" / "helm" / "t2vserve")
    p.add_argument("--chart-only", action="store_true", help="skip promtool and envoy")
    args = p.parse_args(argv)
    checks = Checks()
    check_chart(checks, args.chart.resolve())
    if not args.chart_only:
        check_prometheus(checks)
        check_envoy(checks)
    print(f"deploy-check: {checks.failed} failed" if checks.failed else "deploy-check: all passed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
