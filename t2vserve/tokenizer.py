"""The tiny preset's tokenizer: a sentencepiece unigram model trained offline on product text.

`build_tokenizer(out_dir)` retrains it from `text_corpus` (deterministic: same corpus, same
vocabulary) and saves a transformers `T5Tokenizer`; the result ships in `assets/tokenizer`.
Loading never touches a hub.
"""

import io
from pathlib import Path

ASSET_DIR = Path(__file__).parent / "assets" / "tokenizer"
VOCAB_SIZE = 1024


def train_vocab(vocab_size: int = VOCAB_SIZE) -> list[tuple[str, float]]:
    import sentencepiece as spm

    from t2vserve.text_corpus import corpus_lines

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,  # every CJK character of the corpus gets a piece
        # no NFKC: T5Tokenizer applies no normaliser, so the pieces must match raw text
        # (full-width "，" stays "，")
        normalization_rule_name="identity",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,  # T5's layout
        num_threads=1,  # one thread: the vocabulary is the same on every machine
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    return [(sp.id_to_piece(i), float(sp.get_score(i))) for i in range(sp.get_piece_size())]


def build_tokenizer(out_dir: Path | str):
    from transformers import T5Tokenizer

    tok = T5Tokenizer(vocab=train_vocab(), extra_ids=0)
    tok.save_pretrained(str(out_dir))
    return tok


def load_tokenizer(path: Path | str | None = None):
    """The tokenizer saved in `path` (default: the one shipped with the tiny preset)."""
    from transformers import AutoTokenizer

    path = Path(path) if path is not None else ASSET_DIR
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer.json in {path}")
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


if __name__ == "__main__":
    build_tokenizer(ASSET_DIR)
    print(f"wrote {ASSET_DIR}")
