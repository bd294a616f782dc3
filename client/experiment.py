"""A/B experiments over model variants: which variant a SKU gets, and what came of it.

`t2vserve batch --variants a=0.5,b=0.5` gives each SKU one variant from a hash of the
experiment's name and the SKU, so a rerun (or another machine) assigns the same; `--all-variants`
renders every variant per SKU. `t2vserve experiment report` reads the batch manifest and,
given outcomes (SKU, impressions, conversions), compares conversion rates between variants
with a pooled two-proportion z-test and Wilson intervals. Standard library only: the client
installs without numpy's statistics stack.
"""

import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile: two-sided 95 %
NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # what the server allows in a variant name


class ExperimentError(ValueError):
    """Bad input to an experiment (a split, a manifest, an outcomes file), naming what is wrong."""


def parse_split(text: str) -> dict[str, float]:
    """"a=0.5,b=0.5" -> {"a": 0.5, "b": 0.5}, in the order given. Weights are relative
    (a=1,b=1 is the same split) and must be positive."""
    split: dict[str, float] = {}
    for part in text.split(","):
        name, eq, weight = part.strip().partition("=")
        name = name.strip()
        if not eq or not NAME.match(name):
            raise ExperimentError(f"--variants {text!r}: each entry is NAME=WEIGHT with NAME of "
                                  f"letters, digits, '-' and '_', e.g. a=0.5,b=0.5; got {part!r}")
        if name in split:
            raise ExperimentError(f"--variants {text!r}: variant {name!r} is given twice")
        try:
            w = float(weight)
        except ValueError:
            w = float("nan")
        if not (math.isfinite(w) and w > 0):
            raise ExperimentError(f"--variants {text!r}: the weight of {name!r} must be a "
                                  f"positive number, got {weight.strip()!r}")
        split[name] = w
    total = sum(split.values())
    return {name: w / total for name, w in split.items()}


def split_text(split: dict[str, float]) -> str:
    return ",".join(f"{name}={w:g}" for name, w in split.items())


def bucket(experiment: str, sku: str) -> float:
    """A number in [0, 1) fixed by the experiment's name and the SKU (sha256, so it is the
    same on every machine and Python; `hash()` is salted per process)."""
    digest = hashlib.sha256(f"{experiment}\x00{sku}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def assign(experiment: str, sku: str, split: dict[str, float]) -> str:
    """The SKU's variant: where its bucket falls among the split's cumulative weights."""
    u, edge = bucket(experiment, sku), 0.0
    for name, weight in split.items():
        edge += weight
        if u < edge:
            return name
    return name  # u within rounding of 1.0: the last variant


# statistics ---------------------------------------------------------------------------------

def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion (sound near 0 and 1, where the normal one
    is not); None without trials."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class ProportionTest:
    z: float | None         # None: no test (no trials, or no variation at all)
    p_value: float | None   # two-sided
    difference: float | None  # rate 2 minus rate 1
    difference_ci: tuple[float, float] | None  # unpooled normal interval, 95 %


def two_proportion_test(x1: int, n1: int, x2: int, n2: int) -> ProportionTest:
    """Pooled two-proportion z-test of rate 2 against rate 1 (the chi-square test of the
    2x2 table without continuity correction: chi2 = z^2), two-sided."""
    if n1 <= 0 or n2 <= 0:
        return ProportionTest(None, None, None, None)
    p1, p2 = x1 / n1, x2 / n2
    diff = p2 - p1
    se_diff = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    ci = (diff - Z95 * se_diff, diff + Z95 * se_diff)
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:  # every trial converted, or none did: nothing to tell apart
        return ProportionTest(None, None, diff, ci)
    z = diff / se
    return ProportionTest(z, math.erfc(abs(z) / math.sqrt(2)), diff, ci)


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None when empty."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# manifest and outcomes ----------------------------------------------------------------------

def read_units(manifest: Path) -> dict[tuple[str, str | None], dict]:
    """The last record per (SKU, variant), as a resumed batch sees it (records of duplicate
    catalog lines aside)."""
    path = Path(manifest)
    if not path.exists():
        raise ExperimentError(f"{path}: no such manifest")
    units: dict[tuple[str, str | None], dict] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line torn by a killed run
        if isinstance(record, dict) and "sku" in record and "duplicate_of" not in record:
            units[(record["sku"], record.get("variant"))] = record
    return units


def read_outcomes(path: Path, units: dict[tuple[str, str | None], dict]) -> tuple[list, list]:
    """(rows of (variant, impressions, conversions), SKUs with no clip record). The variant
    is the CSV's `variant` column when it has one, else the one the manifest gave the SKU."""
    path = Path(path)
    by_sku: dict[str, list[str | None]] = {}
    for sku, variant in units:
        by_sku.setdefault(sku, []).append(variant)
    rows, unmatched = [], []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"sku", "impressions", "conversions"} - set(reader.fieldnames or ())
        if missing:
            raise ExperimentError(f"{path}: needs columns sku, impressions, conversions "
                                  f"[, variant]; missing {', '.join(sorted(missing))}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            sku = (row["sku"] or "").strip()
            counts = []
            for col in ("impressions", "conversions"):
                try:
                    counts.append(int((row[col] or "").strip()))
                except ValueError:
                    raise ExperimentError(f"{where}: {col} must be a whole number >= 0, got "
                                          f"{row[col]!r}") from None
            impressions, conversions = counts
            if impressions < 0 or conversions < 0 or conversions > impressions:
                raise ExperimentError(f"{where}: need 0 <= conversions <= impressions, got "
                                      f"{conversions} of {impressions}")
            variant = (row.get("variant") or "").strip() or None
            if variant is None:
                known = by_sku.get(sku, [])
                if len(known) > 1:
                    raise ExperimentError(f"{where}: sku {sku!r} has clips of several variants "
                                          f"({', '.join(map(str, known))}); add a variant column")
                variant = known[0] if known else None
            if (sku, variant) not in units:
                unmatched.append(sku)
                continue
            rows.append((variant, impressions, conversions))
    return rows, unmatched


def arm_order(units: dict, control: str | None = None) -> list[str | None]:
    """The variants in the manifest, the control first: `control` when given, else the
    order of the split the batch recorded (`a=0.5,b=0.5`: a is the control), else by name
    (with --all-variants)."""
    names = {variant for _, variant in units}
    splits = {r.get("split") for r in units.values() if r.get("split")}
    given = next(iter(splits)) if len(splits) == 1 else "all"
    order = [part.split("=")[0] for part in given.split(",")] if given != "all" else []
    ranked = sorted(names, key=lambda v: (v is not None, v not in order,
                                          order.index(v) if v in order else 0, v or ""))
    if control is not None:
        if control not in names:
            raise ExperimentError(f"--control {control!r}: the manifest's variants are "
                                  f"{', '.join(str(v) for v in ranked)}")
        ranked.remove(control)
        ranked.insert(0, control)
    return ranked


def report(manifest: Path, outcomes: Path | None = None, control: str | None = None) -> dict:
    """Per variant (the control first, see arm_order): clips, failures, clips for review,
    latency p50 and p95; with outcomes, impressions, conversions, rate and its Wilson
    interval, and each variant tested against the control."""
    units = read_units(manifest)
    variants: dict[str | None, dict[str, Any]] = {
        v: {"variant": v, "skus": 0, "clips": 0, "failed": 0, "review": 0}
        for v in arm_order(units, control)}
    latencies: dict[str | None, list[float]] = {}
    experiments = set()
    for (sku, variant), r in units.items():
        v = variants[variant]
        v["skus"] += 1
        status = r.get("status")
        v["clips"] += status in ("ok", "review")
        v["failed"] += status == "failed"
        v["review"] += status == "review"
        if status in ("ok", "review") and r.get("latency_s") is not None:
            latencies.setdefault(variant, []).append(float(r["latency_s"]))
        if r.get("experiment"):
            experiments.add(r["experiment"])
    for variant, v in variants.items():
        lat = latencies.get(variant, [])
        v["latency_p50_s"], v["latency_p95_s"] = percentile(lat, 50), percentile(lat, 95)
    out: dict = {"manifest": str(manifest), "experiment": sorted(experiments),
                 "variants": list(variants.values())}
    if outcomes is None:
        return out
    rows, unmatched = read_outcomes(outcomes, units)
    for v in variants.values():
        v.update(impressions=0, conversions=0)
    for variant, impressions, conversions in rows:
        variants[variant]["impressions"] += impressions
        variants[variant]["conversions"] += conversions
    for v in variants.values():
        n, x = v["impressions"], v["conversions"]
        v["rate"] = x / n if n else None
        v["rate_ci95"] = wilson_interval(x, n)
    out["unmatched_skus"] = unmatched
    arms = list(variants.values())
    out["tests"] = []
    for other in arms[1:]:
        t = two_proportion_test(arms[0]["conversions"], arms[0]["impressions"],
                                other["conversions"], other["impressions"])
        out["tests"].append({"control": arms[0]["variant"], "variant": other["variant"],
                             "difference": t.difference, "difference_ci95": t.difference_ci,
                             "z": t.z, "p_value": t.p_value})
    return out


def format_report(r: dict) -> str:
    """The report as a plain-text table (the JSON has every number unrounded)."""
    def num(x, fmt):
        return "-" if x is None else format(x, fmt)

    lines = [f"manifest {r['manifest']}" + (f", experiment {', '.join(r['experiment'])}"
                                            if r["experiment"] else "")]
    with_outcomes = "tests" in r
    head = f"{'variant':<16} {'clips':>6} {'failed':>6} {'review':>6} {'p50 s':>7} {'p95 s':>7}"
    if with_outcomes:
        head += f" {'impr.':>9} {'conv.':>7} {'rate':>8}  95% CI (Wilson)"
    lines.append(head)
    for v in r["variants"]:
        line = (f"{str(v['variant'] or '(default)'):<16} {v['clips']:>6} {v['failed']:>6} "
                f"{v['review']:>6} {num(v['latency_p50_s'], '.2f'):>7} "
                f"{num(v['latency_p95_s'], '.2f'):>7}")
        if with_outcomes:
            ci = v["rate_ci95"]
            line += (f" {v['impressions']:>9} {v['conversions']:>7} {num(v['rate'], '.4%'):>8}  "
                     + (f"[{ci[0]:.4%}, {ci[1]:.4%}]" if ci else "-"))
        lines.append(line)
    for t in r.get("tests", []):
        ci = t["difference_ci95"]
        lines.append(f"{t['variant']} vs {t['control']}: difference {num(t['difference'], '+.4%')}"
                     + (f" [{ci[0]:+.4%}, {ci[1]:+.4%}]" if ci else "")
                     + (f", z {t['z']:.4f}, p {t['p_value']:.4g} (pooled two-proportion "
                        "z-test, two-sided)" if t["z"] is not None else ", no test (no variation)"))
    if r.get("unmatched_skus"):
        lines.append(f"{len(r['unmatched_skus'])} outcome rows match no clip in the manifest: "
                     + ", ".join(r["unmatched_skus"][:10]))
    return "\n".join(lines)
