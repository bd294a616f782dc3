"""Product listing -> Wan2.2 showcase-clip prompt, from the per-language templates in templates/."""

from __future__ import annotations

import copy
import re
import string
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from t2vserve.client.compliance import Check, check_prompt

LANGUAGES = ("zh", "en")
TEMPLATE_DIR = Path(__file__).parent / "templates"
SLOTS = frozenset({"name", "color", "material", "features", "scene", "camera", "light"})
_CATEGORY_KEYS = ("keywords", "required", "template", "scene", "camera", "light")

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# A comma between digits is a thousands separator ("1,000mAh"), not a list separator.
_FEATURE_SPLIT = re.compile(r"\s*(?:[，、;；|\n]|(?<!\d),|,(?!\d))\s*")
_EDGE_PUNCT = " \t\r\n,，、.。;；:：!！?？"
# English names put the head noun before "with"/"for" ("Backpack with headphone port").
_HEAD_CUT = re.compile(r"\s(?:with|for|featuring)\s", re.IGNORECASE)


class ListingError(ValueError):
    """The listing cannot become a prompt: not a dict, a required field missing, a wrong type."""


@dataclass(frozen=True)
class ListingPrompt:
    prompt: str
    language: str  # "zh" | "en"
    category: str
    warnings: tuple[str, ...] = ()
    compliance: Check | None = None  # the check of the prompt (`prompt` is its rewrite)


@lru_cache(maxsize=None)
def _load(language: str) -> dict:
    if language not in LANGUAGES:
        raise ValueError(f"unsupported language {language!r}; expected one of {LANGUAGES}")
    path = TEMPLATE_DIR / f"{language}.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    categories = data.get("categories") or {}
    if "default" not in categories:
        raise ValueError(f"{path}: no 'default' category")
    # Fail at load, not on the first listing that happens to hit a broken category.
    for name, spec in categories.items():
        missing = [key for key in _CATEGORY_KEYS if key not in spec]
        unknown = set().union(*(_slots(alt) for c in spec.get("template", []) for alt in _alternatives(c)))
        if missing or unknown - SLOTS:
            raise ValueError(f"{path}: category {name!r}: missing {missing}, unknown slots "
                             f"{sorted(unknown - SLOTS)}")
    return data


def load_templates(language: str) -> dict:
    """The parsed templates for `language` ("zh" or "en"); a copy, so callers may change it."""
    return copy.deepcopy(_load(language))


def _alternatives(clause) -> list[str]:
    return [clause] if isinstance(clause, str) else list(clause)


def _slots(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field}


@lru_cache(maxsize=None)
def _term(word: str, plural: bool = False) -> re.Pattern:
    """CJK words match as substrings; Latin ones as whole words (so "cool" misses "cooling")."""
    escaped = re.escape(word.casefold())
    if _CJK.search(word):
        return re.compile(escaped)
    suffix = "(?:e?s)?" if plural else ""
    return re.compile(rf"(?<![a-z0-9]){escaped}{suffix}(?![a-z0-9])")


def _fill(template: str, values: dict[str, str]) -> str:
    # "{color}{name}" suits Chinese, but Latin values need a space: "white Wireless Earbuds".
    out = ""
    for literal, field, _, _ in string.Formatter().parse(template):
        piece = literal + (values[field] if field else "")
        if out and piece and re.match(r"[A-Za-z0-9]{2}", out[-1] + piece[0]):
            out += " "
        out += piece
    return out


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip(_EDGE_PUNCT)


def _text_field(listing: dict, field: str) -> str:
    value = listing.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ListingError(f"field {field!r} must be a string, got {type(value).__name__}")
    return _clean(value)


def _features(listing: dict) -> list[str]:
    value = listing.get("features")
    if value is None:
        return []
    if isinstance(value, str):
        items = _FEATURE_SPLIT.split(value)
    elif isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        items = list(value)
    else:
        raise ListingError("field 'features' must be a list of strings or a string")
    features = []
    for item in map(_clean, items):
        if item and item not in features:
            features.append(item)
    return features


def _keywords() -> dict[str, list[str]]:
    # Union over both languages, so the category never depends on the output language.
    merged: dict[str, list[str]] = {}
    for language in LANGUAGES:
        for category, spec in _load(language)["categories"].items():
            bucket = merged.setdefault(category, [])
            bucket.extend(kw for kw in spec["keywords"] if kw not in bucket)
    return merged


def _detect(text: str, keywords: dict[str, list[str]], head_only: bool = True) -> str | None:
    # Head noun comes last in zh and en compounds ("耳机收纳包" is a bag): the match ending
    # last wins, then the longer keyword; equal matches keep the YAML order.
    if head_only and _HEAD_CUT.search(text):
        return _detect(_HEAD_CUT.split(text, 1)[0], keywords) or _detect(text, keywords, False)
    text, best, best_key = text.casefold(), None, (-1, -1)
    for category, words in keywords.items():
        for word in words:
            for match in _term(word, plural=True).finditer(text):
                key = (match.end(), len(word))
                if key > best_key:
                    best, best_key = category, key
    return best


def _vague_warnings(fields: dict[str, str]) -> list[str]:
    entries = [(word, group["hint"]) for language in LANGUAGES
               for group in _load(language).get("vague_words") or [] for word in group["words"]]
    entries.sort(key=lambda entry: (-len(entry[0]), entry[0]))
    warnings = []
    for field, text in fields.items():
        rest = text.casefold()
        for word, hint in entries:
            pattern = _term(word)
            if pattern.search(rest):
                warnings.append(f'vague wording "{word}" in {field}: {hint}')
                rest = pattern.sub("\n", rest)  # "好看的" is not flagged again as "好看"
    return warnings


def _join_features(features: list[str], templates: dict) -> str:
    used = features[: templates.get("max_features", 3)]
    if len(used) < 2:
        return "".join(used)
    return templates["feature_separator"].join(used[:-1]) + templates["feature_last_separator"] + used[-1]


def _tidy(prompt: str, language: str) -> str:
    prompt = re.sub(r"\s+", " ", prompt).strip()
    if language == "zh":
        prompt = re.sub(r"(?<!\d),|,(?!\d)", "，", prompt).replace(";", "；")
        prompt = re.sub(r"\s*([，、。；：！？])\s*", r"\1", prompt)
    prompt = re.sub(r"\s+([,.;:!?])", r"\1", prompt)
    prompt = re.sub(r"([,，、;；])(?:\s*[,，、;；])+", r"\1", prompt)  # ", ," / "，，" -> one
    prompt = re.sub(r"[,，、;；:：]\s*([.。!！?？])", r"\1", prompt)  # no separator before the end
    return re.sub(r"([.。!！?？])\1+", r"\1", prompt)


def listing_to_prompt(listing: dict, *, language: str | None = None,
                      scene: str | None = None, check: bool = True) -> ListingPrompt:
    """Fill the listing's category template; `scene` is used when the listing has none.
    With `check`, the prompt passes the compliance filter: a block raises
    ComplianceBlocked (naming rule and span), a rewrite replaces the prompt."""
    if not isinstance(listing, dict):
        raise ListingError(f"listing must be a dict, got {type(listing).__name__}")
    name = _text_field(listing, "name")
    if not name:
        raise ListingError("listing is missing required field 'name'")
    if language is None:
        language = "zh" if _CJK.search(name) else "en"
    language = language.strip().lower().replace("_", "-").split("-")[0]  # "zh-CN" -> "zh"
    if language not in LANGUAGES:
        raise ValueError(f"unsupported language {language!r}; expected one of {LANGUAGES}")
    templates = _load(language)
    categories = templates["categories"]
    keywords = _keywords()
    warnings: list[str] = []

    category = None
    explicit = _text_field(listing, "category")
    if explicit:
        # A known key wins; otherwise the platform's own label may still name it ("Headphones").
        category = explicit.casefold() if explicit.casefold() in categories else _detect(explicit, keywords)
        if category is None:
            warnings.append(f"unknown category {explicit!r}: chose one from the name")
    category = category or _detect(name, keywords) or "default"
    if category not in categories:
        category = "default"
    spec = categories[category]

    values = {field: _text_field(listing, field) for field in ("color", "material", "scene")}
    features = _features(listing)
    for field in spec["required"]:
        if field != "name" and not (features if field == "features" else values.get(field)):
            raise ListingError(f"listing is missing required field {field!r}")
    warnings += _vague_warnings({"name": name, **{k: v for k, v in values.items() if v},
                                 "features": "\n".join(features)})

    for prefix in templates.get("drop_name_prefixes") or []:
        name = re.sub(rf"^{re.escape(prefix)}\s+", "", name, flags=re.IGNORECASE)
    for field in ("color", "material"):  # "黑色" twice reads badly when the name already says it
        if values[field] and values[field].casefold() in name.casefold():
            values[field] = ""
    values.update(name=name, features=_join_features(features, templates),
                  scene=values["scene"] or _text_field({"scene": scene}, "scene") or spec["scene"],
                  camera=spec["camera"], light=spec["light"])

    clauses = []
    for clause in spec["template"]:
        for alternative in _alternatives(clause):
            if all(values.get(slot) for slot in _slots(alternative)):
                clauses.append(_fill(alternative, values))
                break
    prompt = _tidy(templates["clause_separator"].join(clauses) + templates["end"], language)
    if not check:
        return ListingPrompt(prompt, language, category, tuple(warnings))
    result = check_prompt(prompt).raise_if_blocked()
    warnings += [f'compliance: rule {h.rule} ({h.category}) "{h.text}" at {h.start}-{h.end}: '
                 f"{h.severity}" for h in result.hits]
    return ListingPrompt(result.prompt, language, category, tuple(warnings), result)
