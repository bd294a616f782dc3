"""`t2vserve bench compliance`: what the compliance filter adds per listing (budget: 1 ms).

A fixed catalog of zh and en listings, clean ones and ones that trip each kind of rule, is
made into prompts once; the filter (check_prompt with the shipped rules and the example
brand list) is then timed on every prompt, in rounds, and listing_to_prompt with and
without the check is timed for context. Medians and p99 over all listings and rounds.
"""

import datetime as dt
import json
import statistics
import time
from pathlib import Path

from t2vserve.client.compliance import check_prompt, default_rules
from t2vserve.client.listing import listing_to_prompt

BUDGET_MS = 1.0
_NAMES = {
    "zh": ["无线蓝牙耳机", "不锈钢保温杯", "纯棉T恤", "双肩背包", "陶瓷马克杯", "折叠露营椅",
           "最佳降噪耳机", "顶级真皮沙发", "可治疗失眠的枕头", "限时秒杀电动牙刷", "耐克跑鞋"],
    "en": ["Wireless Earbuds", "Stainless Steel Water Bottle", "Canvas Tote Bag", "Desk Lamp",
           "Best-selling Yoga Mat", "#1 Rated Air Fryer", "Detox Green Tea",
           "Limited Time Offer Backpack", "Nike Running Shoes", "Ceramic Coffee Mug"],
}
_FEATURES = {
    "zh": [["主动降噪", "续航30小时", "触控操作"], ["一键开盖", "12小时保温"], ["100%纯棉", "第一次使用无异味"],
           ["全网最低价", "仅剩3件"], ["国家级工艺", "百分百满意"]],
    "en": [["active noise cancelling", "30-hour battery"], ["leak-proof lid", "1,000 ml"],
           ["100% cotton", "gift for first-time buyers"], ["guaranteed to last", "only 3 left"],
           ["clinically proven", "the world's first foldable design"]],
}


def catalog() -> list[dict]:
    """Every name with every feature list of its language: 105 listings."""
    return [{"name": name, "features": features, "color": "黑色" if lang == "zh" else "black"}
            for lang, names in _NAMES.items() for name in names for features in _FEATURES[lang]]


def _prompts(listings: list[dict]) -> list[str]:
    return [listing_to_prompt(x, check=False).prompt for x in listings]


def _time_each(fn, items, rounds: int) -> list[float]:
    """Milliseconds per call, every item in every round (rounds interleave the items)."""
    out = []
    for _ in range(rounds):
        for item in items:
            t0 = time.perf_counter()
            fn(item)
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def _summary(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"median_ms": round(statistics.median(ms), 4),
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 4),
            "mean_ms": round(statistics.fmean(ms), 4), "calls": len(ms)}


def run_bench(rounds: int = 50) -> dict:
    from t2vserve.perf.run import machine

    t0 = time.perf_counter()
    rules = default_rules()
    load_ms = (time.perf_counter() - t0) * 1e3
    listings = catalog()
    prompts = _prompts(listings)
    actions: dict[str, int] = {}
    for p in prompts:
        action = check_prompt(p).action
        actions[action] = actions.get(action, 0) + 1
    check = _summary(_time_each(check_prompt, prompts, rounds))

    def with_check(x):
        try:
            listing_to_prompt(x)
        except ValueError:  # a block: the error is part of the cost
            pass

    plain = _summary(_time_each(lambda x: listing_to_prompt(x, check=False), listings, rounds))
    checked = _summary(_time_each(with_check, listings, rounds))
    return {"benchmark": "compliance filter per listing", "date": dt.date.today().isoformat(),
            "machine": machine(), "rules": len(rules), "rules_load_ms": round(load_ms, 1),
            "listings": len(listings), "rounds": rounds, "actions": actions,
            "mean_prompt_chars": round(statistics.fmean(map(len, prompts)), 1),
            "check": check, "listing_to_prompt_unchecked": plain,
            "listing_to_prompt_checked": checked, "budget_ms": BUDGET_MS,
            "within_budget": check["p99_ms"] < BUDGET_MS}


def markdown(result: dict) -> str:
    m, c = result["machine"], result["check"]
    rows = [("check_prompt (the filter)", c),
            ("listing_to_prompt, unchecked", result["listing_to_prompt_unchecked"]),
            ("listing_to_prompt, checked", result["listing_to_prompt_checked"])]
    lines = [f"# Compliance filter: time per listing ({result['date']})", "",
             f"Machine: {m['host']}, CPU only: {m['cores']} cores, {m['cpu']}; Python "
             f"{m['python']}. {result['rules']} rules (shipped zh + en sets and the example "
             f"brand list), loaded once in {result['rules_load_ms']} ms. {result['listings']} "
             f"listings (actions: {json.dumps(result['actions'])}), prompts "
             f"{result['mean_prompt_chars']} characters on average, {result['rounds']} rounds.",
             "", "| what | median ms | p99 ms | mean ms | calls |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {s['median_ms']} | {s['p99_ms']} | {s['mean_ms']} | {s['calls']} |"
              for name, s in rows]
    verdict = "within" if result["within_budget"] else "OVER"
    lines += ["", f"The filter's p99 is {c['p99_ms']} ms per listing: {verdict} the "
                  f"{result['budget_ms']:g} ms budget.", ""]
    return "\n".join(lines)


def write_bench(result: dict, out_dir) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"compliance-{result['date']}-{result['machine']['host']}.json"
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    path.with_suffix(".md").write_text(markdown(result))
    return path
