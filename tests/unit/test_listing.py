import copy
import re

import pytest

from t2vserve.client import listing as listing_module
from t2vserve.client.listing import ListingError, ListingPrompt, listing_to_prompt, load_templates

BRIEF = {"name": "无线蓝牙降噪耳机", "color": "黑色", "features": ["主动降噪", "续航30小时", "触控操作"]}
THERMOS = {"name": "Vacuum Insulated Thermos", "color": "silver", "material": "stainless steel",
           "features": ["keeps drinks hot for 12 hours", "leak-proof lid"], "sku": "TH-500", "seed": 7}
CATEGORIES = {"audio", "drinkware", "bags", "shoes", "apparel", "beauty", "home", "default"}
CJK = re.compile(r"[\u4e00-\u9fff]")


def assert_clean(prompt: str):
    for bad in ("None", "，，", "，。", ", ,", ",,", ",.", "  ", "、、", "{", "}"):
        assert bad not in prompt, (bad, prompt)
    assert prompt == prompt.strip() and prompt[-1] in "。."


def test_brief_listing_gives_a_chinese_audio_prompt():
    out = listing_to_prompt(BRIEF)
    assert isinstance(out, ListingPrompt)
    assert (out.language, out.category, out.warnings) == ("zh", "audio", ())
    assert "黑色无线蓝牙降噪耳机" in out.prompt
    assert "主动降噪、续航30小时、触控操作" in out.prompt
    assert "，" in out.prompt and "," not in out.prompt and out.prompt.endswith("。")
    assert load_templates("zh")["categories"]["audio"]["scene"] in out.prompt
    assert_clean(out.prompt)


def test_at_most_three_features_are_used():
    out = listing_to_prompt({**BRIEF, "features": ["主动降噪", "续航30小时", "触控操作", "快充", "防水"]})
    assert "触控操作" in out.prompt
    assert "快充" not in out.prompt and "防水" not in out.prompt


def test_english_thermos_gives_an_english_drinkware_prompt():
    out = listing_to_prompt(THERMOS)
    assert (out.language, out.category, out.warnings) == ("en", "drinkware", ())
    assert "silver Vacuum Insulated Thermos" in out.prompt
    assert "stainless steel" in out.prompt
    assert "keeps drinks hot for 12 hours and leak-proof lid" in out.prompt
    assert load_templates("en")["categories"]["drinkware"]["scene"] in out.prompt
    assert not CJK.search(out.prompt) and "，" not in out.prompt
    assert out.prompt.startswith("Close-up") and out.prompt.endswith(".")
    assert_clean(out.prompt)


def test_scene_comes_from_the_listing_then_the_argument_then_the_category():
    default = load_templates("en")["categories"]["drinkware"]["scene"]
    assert "a camping table at dusk" in listing_to_prompt(THERMOS, scene="a camping table at dusk").prompt
    both = listing_to_prompt({**THERMOS, "scene": "a snowy mountain hut"}, scene="a camping table")
    assert "a snowy mountain hut" in both.prompt and "camping" not in both.prompt
    assert default not in both.prompt


@pytest.mark.parametrize("bad", [{}, {"color": "黑色"}, {"name": "   "}, {"name": None}])
def test_missing_name_raises_naming_the_field(bad):
    with pytest.raises(ListingError, match="missing required field 'name'"):
        listing_to_prompt(bad)


@pytest.mark.parametrize("bad, field", [
    ("耳机", "dict"), (["耳机"], "dict"),
    ({"name": 42}, "'name'"), ({"name": "耳机", "color": 3}, "'color'"),
    ({"name": "耳机", "features": 5}, "'features'"), ({"name": "耳机", "features": ["降噪", 30]}, "'features'"),
])
def test_non_dicts_and_wrong_types_raise(bad, field):
    with pytest.raises(ListingError, match=field):
        listing_to_prompt(bad)
    assert issubclass(ListingError, ValueError)


def test_vague_chinese_word_is_flagged_once_with_its_field():
    out = listing_to_prompt({"name": "好看的耳机"})
    assert len(out.warnings) == 1, out.warnings
    assert '"好看的"' in out.warnings[0] and "in name" in out.warnings[0]
    assert out.category == "audio"


def test_vague_english_words_are_flagged_per_field_as_whole_words():
    out = listing_to_prompt({"name": "a nice cup", "features": ["high quality finish", "cooling sleeve"]})
    assert out.category == "drinkware" and out.language == "en"
    assert any('"nice"' in w and "in name" in w for w in out.warnings)
    assert any('"high quality"' in w and "in features" in w for w in out.warnings)
    assert not any('"cool"' in w for w in out.warnings)  # "cooling" is not "cool"
    assert "the nice cup" in out.prompt and "the a nice" not in out.prompt


@pytest.mark.parametrize("minimal", [{"name": "保温杯"}, {"name": "Thermos"}, {"name": "神秘礼盒"},
                                     {"name": "Widget", "color": None, "material": "", "features": []},
                                     {"name": "耳机", "color": "  ", "features": " ， "}])
def test_missing_optional_fields_leave_no_gaps(minimal):
    out = listing_to_prompt(minimal)
    assert_clean(out.prompt)
    assert "材质" not in out.prompt and "made of" not in out.prompt
    assert "主打" not in out.prompt and "highlighting" not in out.prompt


def test_empty_optional_fields_read_the_same_as_absent_ones():
    assert listing_to_prompt({"name": "Widget", "color": "", "features": []}) == listing_to_prompt({"name": "Widget"})


def test_whitespace_and_repeated_punctuation_are_tidied():
    out = listing_to_prompt({"name": "  无线  耳机！！ ", "color": "黑色，，", "features": ["降噪。。", " 快充 "],
                             "material": "铝合金！！镁合金"})
    assert "一款黑色无线 耳机的" in out.prompt and "采用铝合金！镁合金材质" in out.prompt
    assert "降噪、快充" in out.prompt
    assert_clean(out.prompt)
    en = listing_to_prompt({"name": "Tote", "color": "black , , gold", "material": "canvas..  leather"})
    assert "the black, gold Tote, made of canvas. leather," in en.prompt
    assert_clean(en.prompt)


def test_same_listing_gives_the_same_prompt():
    reordered = dict(reversed(list(BRIEF.items())))
    assert listing_to_prompt(BRIEF) == listing_to_prompt(dict(BRIEF)) == listing_to_prompt(reordered)


def test_explicit_category_overrides_keywords():
    out = listing_to_prompt({**BRIEF, "category": "bags"})
    assert out.category == "bags"
    assert load_templates("zh")["categories"]["bags"]["scene"] in out.prompt
    assert listing_to_prompt({"name": "Widget", "category": "Headphones"}).category == "audio"


def test_unknown_category_falls_back_to_keywords_then_default():
    out = listing_to_prompt({"name": "Widget", "category": "gadgets"})
    assert out.category == "default"
    assert load_templates("en")["categories"]["default"]["scene"] in out.prompt
    assert any("gadgets" in w for w in out.warnings)
    assert listing_to_prompt({"name": "蓝牙耳机", "category": "数码"}).category == "audio"


@pytest.mark.parametrize("name, category", [
    ("不锈钢保温杯", "drinkware"), ("Leather Tote Bag", "bags"), ("男士运动鞋", "shoes"),
    ("Running Sneakers", "shoes"), ("纯棉T恤", "apparel"), ("丝绒哑光口红", "beauty"),
    ("Eau de Parfum perfume", "beauty"), ("北欧陶瓷花瓶", "home"), ("LED desk lamp", "home"),
    ("耳机收纳包", "bags"), ("Backpack with headphone port", "bags"), ("鞋柜", "home"),
    ("Cooling fan", "default"),
])
def test_keywords_pick_the_head_noun(name, category):
    assert listing_to_prompt({"name": name}).category == category


def test_features_as_a_string_are_split():
    out = listing_to_prompt({**BRIEF, "features": "主动降噪、续航30小时，触控操作; 快充"})
    assert "主动降噪、续航30小时、触控操作" in out.prompt and "快充" not in out.prompt
    en = listing_to_prompt({**THERMOS, "features": "1,000 ml capacity, leak-proof lid"})
    assert "1,000 ml capacity and leak-proof lid" in en.prompt


def test_language_can_be_forced_and_is_validated():
    out = listing_to_prompt({"name": "Wireless Earbuds", "color": "white"}, language="zh-CN")
    assert (out.language, out.category) == ("zh", "audio")
    assert out.prompt.startswith("一款white Wireless Earbuds的") and out.prompt.endswith("。")
    with pytest.raises(ValueError, match="unsupported language"):
        listing_to_prompt(BRIEF, language="fr")


def test_colour_already_in_the_name_is_not_repeated():
    out = listing_to_prompt({"name": "Red Lipstick", "color": "red"})
    assert "red Red" not in out.prompt and "Red Lipstick" in out.prompt


def test_category_required_fields_come_from_the_templates(monkeypatch):
    real = listing_module._load

    def strict(language):
        data = copy.deepcopy(real(language))
        data["categories"]["audio"]["required"] = ["name", "color"]
        return data

    monkeypatch.setattr(listing_module, "_load", strict)
    with pytest.raises(ListingError, match="missing required field 'color'"):
        listing_to_prompt({"name": "蓝牙耳机"})
    assert listing_to_prompt(BRIEF).category == "audio"
    monkeypatch.setattr(listing_module, "_load", real)
    assert listing_to_prompt({"name": "蓝牙耳机"}).category == "audio"


def test_template_files_agree_and_use_their_own_punctuation():
    zh, en = load_templates("zh"), load_templates("en")
    assert set(zh["categories"]) == set(en["categories"]) >= CATEGORIES
    for name in zh["categories"]:
        assert set(zh["categories"][name]["keywords"]) == set(en["categories"][name]["keywords"]), name
    for name, spec in zh["categories"].items():
        text = str(spec["template"]) + spec["scene"] + spec["camera"] + spec["light"]
        assert CJK.search(text) and "," not in spec["camera"] + spec["scene"], name
    for name, spec in en["categories"].items():
        assert not CJK.search(str(spec["template"]) + spec["scene"] + spec["camera"] + spec["light"]), name
    assert {"好看的", "高端"} <= {w for g in zh["vague_words"] for w in g["words"]}
    assert {"nice", "high quality"} <= {w for g in en["vague_words"] for w in g["words"]}


def test_load_templates_returns_a_copy():
    load_templates("en")["categories"]["audio"]["scene"] = "CHANGED"
    assert load_templates("en")["categories"]["audio"]["scene"] != "CHANGED"
    assert "CHANGED" not in listing_to_prompt({"name": "headphones"}).prompt
