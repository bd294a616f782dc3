"""The compliance filter: a table of zh/en phrases with the action each must get (false-
positive traps included), rewrites, spans, and rule files refused at load with file and line."""

import json
import subprocess
import sys

import pytest

from t2vserve.client.compliance import (ComplianceBlocked, RuleFileError, check_prompt,
                                        load_brand_file, load_rule_file, load_rules)

# (phrase, expected action, a rule id that must be among the hits, or None)
TABLE = [
    # zh: absolute and superlative claims -> rewrite
    ("最佳降噪耳机", "rewrite", "zh.absolute.best"),
    ("全网第一的保温杯", "rewrite", "zh.absolute.first"),
    ("销量第一品牌", "rewrite", "zh.absolute.first"),
    ("国家级工艺茶具", "rewrite", "zh.absolute.national"),
    ("顶级真皮沙发", "rewrite", "zh.absolute.top"),
    ("极品大红袍", "rewrite", "zh.absolute.supreme"),
    ("100%有效的面膜", "rewrite", "zh.absolute.percent"),
    ("百分百满意", "rewrite", "zh.absolute.percent"),
    ("世界级音质", "rewrite", "zh.absolute.national"),
    ("唯一的选择", "rewrite", "zh.absolute.supreme"),
    ("永不褪色的T恤", "rewrite", "zh.absolute.guarantee"),
    ("最先进的扫地机器人", "rewrite", "zh.absolute.most"),
    # zh: traps -> pass
    ("第一次使用很方便", "pass", None),
    ("第一步：打开盖子", "pass", None),
    ("第一眼就喜欢", "pass", None),
    ("100%纯棉T恤", "pass", None),
    ("百分之百桑蚕丝睡衣", "pass", None),
    ("最低温度零下二十度也能用", "pass", None),
    ("和最好的朋友一起野餐", "pass", None),
    ("新鲜的苹果放在木桌上", "pass", None),
    ("白色无线耳机，主动降噪，续航30小时", "pass", None),
    ("第一代产品的升级款", "pass", None),
    # zh: medical and efficacy -> block (whitening -> warn)
    ("可治疗失眠的枕头", "block", "zh.medical.treat"),
    ("根治脚气的鞋垫", "block", "zh.medical.treat"),
    ("降血压的保健茶", "block", "zh.medical.disease"),
    ("抗癌食品", "block", "zh.medical.disease"),
    ("减肥茶", "block", "zh.medical.body"),
    ("排毒养颜胶囊", "block", "zh.medical.body"),
    ("无副作用的护肤品", "block", "zh.medical.safe"),
    ("增强免疫力的蜂蜜", "block", "zh.medical.disease"),
    ("美白精华液", "warn", "zh.efficacy.whitening"),
    # zh: urgency and price
    ("限时抢购无线耳机", "rewrite", "zh.urgency.limited"),
    ("秒杀价保温杯", "rewrite", "zh.urgency.limited"),
    ("仅剩3件", "rewrite", "zh.urgency.limited"),
    ("全网最低价", "rewrite", "zh.price.lowest"),
    ("打五折的背包", "warn", "zh.price.discount"),
    # zh: brands (example list) -> block
    ("耐克跑鞋", "block", "brand.nike"),
    ("戴森吹风机", "block", "brand.dyson"),
    ("适用于iPhone的手机壳", "pass", None),
    # en: absolute and superlative claims -> rewrite
    ("the best wireless earbuds", "rewrite", "en.absolute.best"),
    ("Best-selling water bottle", "rewrite", "en.absolute.best-selling"),
    ("#1 rated backpack", "rewrite", "en.absolute.number-one"),
    ("No. 1 choice for hikers", "rewrite", "en.absolute.number-one"),
    ("guaranteed to last", "rewrite", "en.absolute.guaranteed"),
    ("100% effective stain remover", "rewrite", "en.absolute.guaranteed"),
    ("the world's first foldable kettle", "rewrite", "en.absolute.first"),
    ("world-class sound", "rewrite", "en.absolute.superlative"),
    ("the perfect gift", "rewrite", "en.absolute.superlative"),
    # en: traps -> pass
    ("a discount for first-time buyers", "pass", None),
    ("best before 2027-06", "pass", None),
    ("for best results, chill before serving", "pass", None),
    ("100% cotton t-shirt", "pass", None),
    ("100 % organic cotton towel", "pass", None),
    ("a sweet treat in a gift box", "pass", None),
    ("bestow a gift", "pass", None),
    ("the #10 wrench", "pass", None),
    ("the first step is to unfold the tripod", "pass", None),
    ("healing crystal bracelet on velvet", "pass", None),
    ("case compatible with iPhone 15", "pass", None),
    ("money-back guarantee included", "pass", None),
    ("a red apple on a table", "pass", None),
    ("Apple AirPods on a desk", "block", "brand.apple"),
    # en: medical and efficacy -> block (clinically proven -> warn)
    ("cures acne overnight", "block", "en.medical.cure"),
    ("treats eczema gently", "block", "en.medical.cure"),
    ("anti-cancer green tea", "block", "en.medical.disease"),
    ("lowers blood pressure", "block", "en.medical.disease"),
    ("weight loss coffee", "block", "en.medical.body"),
    ("detox tea", "block", "en.medical.body"),
    ("FDA approved serum", "block", "en.medical.safe"),
    ("clinically proven moisturizer", "warn", "en.efficacy.proven"),
    # en: urgency and price
    ("limited time offer: wireless earbuds", "rewrite", "en.urgency.limited"),
    ("only 3 left in stock", "rewrite", "en.urgency.limited"),
    ("hurry, while supplies last", "rewrite", "en.urgency.limited"),
    ("lowest price ever", "rewrite", "en.price.lowest"),
    ("50% off this week", "warn", "en.price.discount"),
    # en: brands (example list) -> block
    ("Nike running shoes", "block", "brand.nike"),
    ("a LEGO set on a desk", "block", "brand.lego"),
    ("an LV monogram bag", "block", "brand.louis-vuitton"),
    ("a level floor", "pass", None),
]


def test_table_is_large_and_mixed():
    actions = {a for _, a, _ in TABLE}
    assert len(TABLE) >= 60 and actions == {"pass", "warn", "rewrite", "block"}


@pytest.mark.parametrize("phrase,action,rule", TABLE, ids=[p for p, _, _ in TABLE])
def test_phrase(phrase, action, rule):
    check = check_prompt(phrase)
    assert check.action == action, check.to_dict()
    if rule is not None:
        assert rule in {h.rule for h in check.hits}, check.to_dict()
    for hit in check.hits:
        assert phrase[hit.start:hit.end] == hit.text


def test_rewrite_keeps_original_and_spans():
    check = check_prompt("顶级极品茶叶，限时秒杀")
    assert check.action == "rewrite"
    assert check.prompt == "高品质精选茶叶"
    d = check.to_dict()
    assert d["original"] == "顶级极品茶叶，限时秒杀" and d["prompt"] == "高品质精选茶叶"
    assert [h["span"] for h in d["hits"]] == [[0, 2], [2, 4], [7, 9], [9, 11]]
    en = check_prompt("The best earbuds, limited time offer.")
    assert en.prompt == "great earbuds." and en.action == "rewrite"


def test_block_names_rule_and_span():
    check = check_prompt("白色保温杯，可治疗失眠")
    with pytest.raises(ComplianceBlocked) as err:
        check.raise_if_blocked()
    assert "rule zh.medical.treat (medical) at characters 7-9: '治疗'" in str(err.value)
    assert json.loads(check.header()) == {"action": "block", "hits": [
        {"rule": "zh.medical.treat", "severity": "block", "span": [7, 9]}]}
    assert check_prompt("a white cup").raise_if_blocked().action == "pass"


def test_block_wins_over_rewrite_on_the_same_prompt():
    check = check_prompt("the best detox tea")
    assert check.action == "block" and {h.rule for h in check.hits} == {
        "en.absolute.best", "en.medical.body"}


def _write(tmp_path, text, name="rules.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = "word_boundaries: true\nrules:\n  - id: x.a\n    category: c\n    pattern: foo\n    severity: warn\n"


@pytest.mark.parametrize("text,line,reason", [
    ("rules:\n  - id: x.a\n    pattern: [unclosed\n", 4, "not valid YAML"),
    ("rules:\n  - id: x.a\n    category: c\n    pattern: foo\n    severity: deny\n", 5,
     "unknown severity 'deny'; allowed: ['block', 'rewrite', 'warn']"),
    ("rules:\n  - id: x.a\n    category: c\n    pattern: foo\n    severity: warn\n"
     "  - id: x.b\n    category: c\n    pattern: 'a(b'\n    severity: block\n", 8,
     "rule x.b: pattern: bad regular expression: missing ), unterminated subpattern"),
    ("rules:\n  - id: x.a\n    category: c\n    pattern: foo\n    severity: rewrite\n", 2,
     "rule x.a: a rewrite rule needs a 'replacement'"),
    ("rules:\n  - id: x.a\n    category: c\n    pattern: foo\n    severity: warn\n"
     "    replacement: bar\n", 6, "only a rewrite rule has a replacement"),
    ("rules:\n  - id: x.a\n    category: c\n    pattern: foo\n    severity: rewrite\n"
     "    replacement: '\\2'\n", 6, "bad replacement: invalid group reference 2"),
    ("rules:\n  - id: x.a\n    category: c\n    patern: foo\n    severity: warn\n", 4,
     "unknown key 'patern'"),
    ("rules:\n  - id: x.a\n    severity: warn\n    pattern: foo\n", 2,
     "rule x.a: missing ['category']"),
    ("rules:\n  - id: x.a\n    category: c\n    pattern: 'a*'\n    severity: warn\n", 4,
     "matches the empty string"),
    ("rules:\n  - id: x.a\n    category: c\n    pattern: foo\n    severity: warn\n"
     "    unless: '(('\n", 6, "rule x.a: unless: bad regular expression"),
    ("rules: []\n", 1, "'rules' must be a non-empty list"),
])
def test_malformed_rule_file_names_file_line_and_reason(tmp_path, text, line, reason):
    path = _write(tmp_path, text)
    with pytest.raises(RuleFileError) as err:
        load_rule_file(path)
    assert err.value.path == str(path) and err.value.line == line, str(err.value)
    assert str(err.value).startswith(f"{path}:{line}: ") and reason in str(err.value)


def test_duplicate_ids_and_bad_brand_file(tmp_path):
    a, b = _write(tmp_path, GOOD, "a.yaml"), _write(tmp_path, GOOD, "b.yaml")
    with pytest.raises(RuleFileError, match=rf"{b}:3: rule id x.a is also defined at {a}:3"):
        load_rules([a, b], brands=None)
    bad = _write(tmp_path, "brands:\n  - id: acme\n    terms: []\n", "brands.yaml")
    with pytest.raises(RuleFileError, match=rf"{bad}:3: brand acme: 'terms' must be a list"):
        load_brand_file(bad)


def test_own_rule_and_brand_files(tmp_path):
    rules = _write(tmp_path, GOOD)
    brands = _write(tmp_path, "severity: warn\nbrands:\n  - id: acme\n    terms: [Acme, 艾克美]\n",
                    "brands.yaml")
    ruleset = load_rules([rules], brands=brands)
    assert check_prompt("an Acme foo", ruleset).to_dict()["rules"] == ["brand.acme", "x.a"]
    assert check_prompt("acmes food", ruleset).action == "pass"  # whole words only
    assert check_prompt("艾克美水杯", ruleset).action == "warn"


def test_the_client_check_needs_no_torch():
    code = ("import sys; from t2vserve.client.compliance import check_prompt; "
            "from t2vserve.client.listing import listing_to_prompt; "
            "assert check_prompt('最佳').action == 'rewrite'; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_listing_prompts_are_checked_and_the_templates_trip_no_rule():
    from t2vserve.client.listing import LANGUAGES, listing_to_prompt, load_templates

    for language in LANGUAGES:  # the words we add ourselves must never be a claim
        for name, spec in load_templates(language)["categories"].items():
            texts = [spec["scene"], spec["camera"], spec["light"], *(
                t for c in spec["template"] for t in ([c] if isinstance(c, str) else c))]
            for text in texts:
                assert check_prompt(text).hits == (), (language, name, text)
    made = listing_to_prompt({"name": "顶级保温杯", "color": "黑色"})
    assert made.compliance.action == "rewrite" and "顶级" not in made.prompt
    assert made.compliance.original.count("顶级") == 1 and "高品质保温杯" in made.prompt
    assert any("zh.absolute.top" in w for w in made.warnings)
    with pytest.raises(ComplianceBlocked, match="rule brand.dyson"):
        listing_to_prompt({"name": "Dyson hair dryer"})
    assert listing_to_prompt({"name": "Dyson hair dryer"}, check=False).compliance is None


def test_bench_runs_and_reports_every_action(tmp_path):
    from t2vserve.perf.bench_compliance import run_bench, write_bench

    result = run_bench(rounds=1)
    assert result["listings"] == 105 and set(result["actions"]) == {"pass", "rewrite", "block"}
    assert result["check"]["calls"] == 105 and result["check"]["median_ms"] > 0
    path = write_bench(result, tmp_path)
    assert "| check_prompt (the filter) |" in path.with_suffix(".md").read_text()


def test_cli_rule_options_block_before_any_connection(tmp_path):
    brands = _write(tmp_path, "brands:\n  - id: acme\n    terms: [Acme]\n", "brands.yaml")
    bad = _write(tmp_path, "rules:\n  - id: x.a\n    category: c\n    pattern: foo\n"
                           "    severity: deny\n", "bad.yaml")
    catalog = _write(tmp_path, '{"sku": "a", "prompt": "a red cup"}\n', "catalog.jsonl")
    cli = [sys.executable, "-m", "t2vserve.cli"]
    r = subprocess.run([*cli, "generate", "an Acme kettle", "--brands", str(brands), "--url",
                        "127.0.0.1:1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "rule brand.acme (brand) at characters 3-7: 'Acme'" in r.stderr
    r = subprocess.run([*cli, "batch", str(catalog), "--rules", str(bad), "--out-dir",
                        str(tmp_path / "out"), "--url", "127.0.0.1:1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and f"{bad}:5: rule x.a: unknown severity 'deny'" in r.stderr
    assert not (tmp_path / "out" / "manifest.jsonl").exists()
