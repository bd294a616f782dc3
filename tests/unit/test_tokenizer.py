from t2vserve.text_corpus import BRIEF_PROMPTS, WAN_DEFAULT_NEGATIVE_PROMPT
from t2vserve.tokenizer import VOCAB_SIZE, load_tokenizer, train_vocab


def test_shipped_tokenizer_is_what_the_builder_makes():
    tok = load_tokenizer()
    vocab = train_vocab()
    assert len(vocab) == VOCAB_SIZE == len(tok)
    ids = tok.convert_tokens_to_ids([p for p, _ in vocab])
    assert ids == list(range(VOCAB_SIZE))


def test_covers_chinese_and_english_product_text():
    tok = load_tokenizer()
    for text in BRIEF_PROMPTS + [WAN_DEFAULT_NEGATIVE_PROMPT, "红色杯子在木桌上缓慢旋转",
                                 "a red cup rotating slowly on a wooden table"]:
        ids = tok(text).input_ids
        assert tok.unk_token_id not in ids, text
        assert ids[-1] == tok.eos_token_id
        assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == text.replace(" ", "")


def test_pads_to_a_fixed_length_with_a_mask():
    tok = load_tokenizer()
    enc = tok(["耳机", "a red stainless-steel thermos on a wooden table"], padding="max_length", max_length=64, truncation=True)
    assert [len(x) for x in enc.input_ids] == [64, 64]
    assert sum(enc.attention_mask[0]) < sum(enc.attention_mask[1]) < 64
    assert enc.input_ids[0][sum(enc.attention_mask[0]):] == [tok.pad_token_id] * (64 - sum(enc.attention_mask[0]))
