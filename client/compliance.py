"""Compliance filter for product prompts: rule sets (YAML) -> a check of each prompt.

A rule names a pattern, a category and a severity: `block` (the prompt is refused, naming
the rule and the span), `rewrite` (the span is replaced, the original kept in the result) or
`warn` (recorded only). `unless` patterns are context that makes a match no claim ("第一次使用",
"100% cotton"). English rule sets match whole words. The shipped sets are rules/zh.yaml and
rules/en.yaml; the brand terms the platform does not own come from a file the platform
supplies ($T2V_BRANDS; rules/brands.example.yaml otherwise). See docs/COMPLIANCE.md.

Plain Python and PyYAML only: it runs in the base client install, without the server.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

SEVERITIES = ("block", "rewrite", "warn")  # strongest first
ACTIONS = ("pass", "warn", "rewrite", "block")
RULE_DIR = Path(__file__).parent / "rules"
SHIPPED = (RULE_DIR / "zh.yaml", RULE_DIR / "en.yaml")
EXAMPLE_BRANDS = RULE_DIR / "brands.example.yaml"
_RULE_KEYS = {"id", "category", "pattern", "severity", "replacement", "unless"}
_BRAND_KEYS = {"id", "terms", "unless", "case_sensitive"}
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


class RuleFileError(ValueError):
    """A rule file that cannot be used: the message names the file, the line and why."""

    def __init__(self, path, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{path}:{line}: {reason}" if line else f"{path}: {reason}")


class ComplianceBlocked(ValueError):
    """A prompt a `block` rule refuses; `check` holds every hit."""

    def __init__(self, check: Check):
        self.check = check
        super().__init__("prompt blocked by compliance " + "; ".join(
            f"rule {h.rule} ({h.category}) at characters {h.start}-{h.end}: {h.text!r}"
            for h in check.hits if h.severity == "block"))


@dataclass(frozen=True)
class Rule:
    id: str
    category: str
    severity: str
    regex: re.Pattern
    replacement: str | None = None
    unless: re.Pattern | None = None
    source: str = ""  # "file:line", for messages


@dataclass(frozen=True)
class Hit:
    rule: str
    category: str
    severity: str
    start: int
    end: int
    text: str
    replacement: str | None = None

    def to_dict(self) -> dict:
        out = {"rule": self.rule, "category": self.category, "severity": self.severity,
               "span": [self.start, self.end], "text": self.text}
        if self.replacement is not None:
            out["replacement"] = self.replacement
        return out


@dataclass(frozen=True)
class Check:
    action: str           # pass | warn | rewrite | block
    prompt: str           # the prompt to send: the original, or the rewrite
    original: str
    hits: tuple[Hit, ...] = ()

    def to_dict(self) -> dict:
        out: dict = {"action": self.action, "rules": sorted({h.rule for h in self.hits}),
                     "hits": [h.to_dict() for h in self.hits]}
        if self.action in ("rewrite", "block"):  # the text the spans index
            out["original"] = self.original
        if self.action == "rewrite":
            out["prompt"] = self.prompt
        return out

    def header(self) -> str:
        """One line of ASCII JSON (an HTTP header): action, hits (rule, severity, span in the
        prompt as sent) and, for a rewrite, the prompt generated."""
        out: dict = {"action": self.action, "hits": [
            {"rule": h.rule, "severity": h.severity, "span": [h.start, h.end]}
            for h in self.hits]}
        if self.action == "rewrite":
            out["prompt"] = self.prompt
        return json.dumps(out, separators=(",", ":"))

    def raise_if_blocked(self) -> Check:
        if self.action == "block":
            raise ComplianceBlocked(self)
        return self


class RuleSet:
    def __init__(self, rules: list[Rule]):
        self.rules = tuple(rules)

    def __len__(self) -> int:
        return len(self.rules)

    def check(self, text: str) -> Check:
        found = []
        for rule in self.rules:
            matches = [m for m in rule.regex.finditer(text) if m.end() > m.start()]
            if not matches:
                continue
            allowed = [m.span() for m in rule.unless.finditer(text)] if rule.unless else []
            for m in matches:
                if any(a <= m.start() and m.end() <= b for a, b in allowed):
                    continue
                found.append(Hit(rule.id, rule.category, rule.severity, m.start(), m.end(),
                                 m.group(), m.expand(rule.replacement)
                                 if rule.replacement is not None else None))
        # Overlaps: the stronger severity, then the longer match, then the earlier one keeps
        # the span ("best-selling" is one hit, not also "best").
        found.sort(key=lambda h: (_RANK[h.severity], h.start - h.end, h.start))
        kept: list[Hit] = []
        for hit in found:
            if all(hit.end <= k.start or k.end <= hit.start for k in kept):
                kept.append(hit)
        kept.sort(key=lambda h: h.start)
        severities = {h.severity for h in kept}
        action = next((s for s in SEVERITIES if s in severities), "pass")
        prompt = text
        if action == "rewrite":
            for hit in reversed(kept):
                if hit.severity == "rewrite":
                    prompt = prompt[:hit.start] + (hit.replacement or "") + prompt[hit.end:]
            prompt = _tidy(prompt)
        return Check(action, prompt, text, tuple(kept))


def _tidy(text: str) -> str:
    """What a removal leaves: doubled spaces, a space before punctuation, empty list items."""
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r"\s+([,.;:!?，。；：！？、])", r"\1", text)
    text = re.sub(r"([,，、;；])(?:\s*[,，、;；])+", r"\1", text)
    text = re.sub(r"[,，、;；:：]\s*([.。!！?？])", r"\1", text)
    return text.strip(" ,，、;；")


def _compile(pattern: str, words: bool, what: str, path, line) -> re.Pattern:
    if words:  # Latin words whole: "best" misses "bestow", "#1" misses "#10"
        pattern = rf"(?<![A-Za-z0-9])(?:{pattern})(?![A-Za-z0-9])"
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise RuleFileError(path, line, f"{what}: bad regular expression: {exc}") from None


def _parse(path: Path) -> tuple[dict, yaml.Node]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleFileError(path, None, f"cannot read: {exc}") from None
    try:
        data, node = yaml.safe_load(text), yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise RuleFileError(path, mark.line + 1 if mark else None,
                            f"not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise RuleFileError(path, None, f"not valid YAML: {exc}") from None
    if not isinstance(data, dict) or node is None:
        raise RuleFileError(path, 1, "the file must be a mapping with a 'rules' (or 'brands') list")
    return data, node


def _items(path: Path, data: dict, node: yaml.Node, key: str) -> list[tuple[dict, int, dict]]:
    """(item, its line, line of each of its keys) for the list under `key`."""
    values = data.get(key)
    if not isinstance(values, list) or not values:
        raise RuleFileError(path, node.start_mark.line + 1, f"'{key}' must be a non-empty list")
    seq = next(v for k, v in node.value if k.value == key)
    out = []
    for item, item_node in zip(values, seq.value):
        line = item_node.start_mark.line + 1
        if not isinstance(item, dict):
            raise RuleFileError(path, line, f"each entry of '{key}' must be a mapping")
        lines = {k.value: k.start_mark.line + 1 for k, _ in item_node.value}
        out.append((item, line, lines))
    return out


def _string(path, line, what: str, value, empty_ok: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty_ok):
        raise RuleFileError(path, line, f"{what} must be a{'' if empty_ok else ' non-empty'} "
                                        f"string, got {value!r}")
    return value


def _unless(path, line, rule_id: str, value) -> re.Pattern | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise RuleFileError(path, line, f"rule {rule_id}: 'unless' must be a pattern or a "
                                        "list of patterns")
    # no word boundaries here: context ends where it likes ("100%纯棉T恤")
    return _compile("|".join(f"(?:{v})" for v in value), False, f"rule {rule_id}: unless",
                    path, line)


def _id_of(path, item: dict, line: int, lines: dict, allowed: set) -> str:
    """An entry's id, once no key outside `allowed` is there (each error at its own line)."""
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise RuleFileError(path, lines[unknown[0]], f"unknown key {unknown[0]!r}; "
                                                     f"allowed: {sorted(allowed)}")
    entry_id = _string(path, lines.get("id", line), "id", item.get("id"))
    if not _ID.match(entry_id):
        raise RuleFileError(path, lines["id"], f"id {entry_id!r}: use lower-case letters, "
                                               "digits, '.', '_' and '-'")
    return entry_id


def load_rule_file(path) -> list[Rule]:
    """The rules of one file: {language, word_boundaries, rules: [{id, category, pattern,
    severity, replacement, unless}]}; any mistake is a RuleFileError naming file and line."""
    path = Path(path)
    data, node = _parse(path)
    words = data.get("word_boundaries", False)
    if not isinstance(words, bool):
        raise RuleFileError(path, 1, f"word_boundaries must be true or false, got {words!r}")
    rules = []
    for item, line, lines in _items(path, data, node, "rules"):
        rule_id = _id_of(path, item, line, lines, _RULE_KEYS)
        missing = [k for k in ("category", "pattern", "severity") if k not in item]
        if missing:
            raise RuleFileError(path, line, f"rule {rule_id}: missing {missing}")
        severity = item["severity"]
        if severity not in SEVERITIES:
            raise RuleFileError(path, lines["severity"], f"rule {rule_id}: unknown severity "
                                f"{severity!r}; allowed: {list(SEVERITIES)}")
        replacement = item.get("replacement")
        if severity == "rewrite":
            if "replacement" not in item:
                raise RuleFileError(path, line, f"rule {rule_id}: a rewrite rule needs a "
                                                "'replacement' (\"\" removes the match)")
            _string(path, lines["replacement"], f"rule {rule_id}: replacement", replacement,
                    empty_ok=True)
        elif replacement is not None:
            raise RuleFileError(path, lines["replacement"], f"rule {rule_id}: only a rewrite "
                                                            f"rule has a replacement")
        pattern = _string(path, lines["pattern"], f"rule {rule_id}: pattern", item["pattern"])
        regex = _compile(pattern, words, f"rule {rule_id}: pattern", path, lines["pattern"])
        if regex.match(""):
            raise RuleFileError(path, lines["pattern"], f"rule {rule_id}: the pattern matches "
                                                        "the empty string")
        if replacement:
            try:
                regex.sub(replacement, "")  # a group reference the pattern lacks fails here
            except (re.error, IndexError) as exc:
                raise RuleFileError(path, lines["replacement"], f"rule {rule_id}: bad "
                                    f"replacement: {exc}") from None
        rules.append(Rule(rule_id, _string(path, lines["category"], f"rule {rule_id}: category",
                                           item["category"]), severity, regex,
                          replacement, _unless(path, lines.get("unless", line), rule_id,
                                               item.get("unless")), f"{path}:{line}"))
    return rules


def load_brand_file(path) -> list[Rule]:
    """Brand terms: {severity (block), brands: [{id, terms: [...], unless, case_sensitive}]};
    Latin terms match whole words, case-insensitively unless the brand says case_sensitive
    ("Apple" the brand, "apple" the fruit); each brand is rule `brand.<id>`."""
    path = Path(path)
    data, node = _parse(path)
    severity = data.get("severity", "block")
    if severity not in SEVERITIES or severity == "rewrite":
        raise RuleFileError(path, 1, f"severity {severity!r}: brand terms take 'block' or 'warn'")
    rules = []
    for item, line, lines in _items(path, data, node, "brands"):
        brand = _id_of(path, item, line, lines, _BRAND_KEYS)
        terms = item.get("terms")
        if not isinstance(terms, list) or not terms or not all(isinstance(t, str) and t.strip()
                                                               for t in terms):
            raise RuleFileError(path, lines.get("terms", line), f"brand {brand}: 'terms' must "
                                                                "be a list of non-empty strings")
        alternatives = [re.escape(t.strip()) if _CJK.search(t) else
                        rf"(?<![A-Za-z0-9]){re.escape(t.strip())}(?![A-Za-z0-9])"
                        for t in sorted(terms, key=len, reverse=True)]
        exact = item.get("case_sensitive", False)
        if not isinstance(exact, bool):
            raise RuleFileError(path, lines["case_sensitive"], f"brand {brand}: case_sensitive "
                                                               f"must be true or false")
        regex = re.compile("|".join(alternatives), 0 if exact else re.IGNORECASE)
        rules.append(Rule(f"brand.{brand}", "brand", severity, regex, None,
                          _unless(path, lines.get("unless", line), f"brand.{brand}",
                                  item.get("unless")), f"{path}:{line}"))
    return rules


def load_rules(paths=SHIPPED, brands=EXAMPLE_BRANDS) -> RuleSet:
    """The rule files and a brand file (None: no brand terms) as one set; ids are unique."""
    rules: list[Rule] = []
    for path in paths:
        rules += load_rule_file(path)
    if brands is not None:
        rules += load_brand_file(brands)
    seen: dict[str, str] = {}
    for rule in rules:
        if rule.id in seen:
            path, _, line = rule.source.rpartition(":")
            raise RuleFileError(path, int(line), f"rule id {rule.id} is also defined at "
                                                 f"{seen[rule.id]}")
        seen[rule.id] = rule.source
    return RuleSet(rules)


@lru_cache(maxsize=None)
def _rules_for(extra: str, brands: str) -> RuleSet:
    paths = [*SHIPPED, *(Path(p) for p in extra.split(os.pathsep) if p)]
    return load_rules(paths, Path(brands) if brands else EXAMPLE_BRANDS)


def default_rules() -> RuleSet:
    """The shipped sets, plus $T2V_RULES (more rule files, os.pathsep-separated), with the
    brand file $T2V_BRANDS (else the shipped example). Loaded once per configuration."""
    return _rules_for(os.environ.get("T2V_RULES", ""), os.environ.get("T2V_BRANDS", ""))


def check_prompt(text: str, rules: RuleSet | None = None) -> Check:
    """The check of `text` under `rules` (default_rules() when None); never raises on a
    block: call .raise_if_blocked() where a block must stop the request."""
    return (rules or default_rules()).check(text)
