"""What the trained tiny preset can draw: colour adherence (8 colours x English and Chinese)
at the default guidance and at 1.0, and rotating vs still motion (4 products x 2 languages).

The same prompts and measures as tests/integration/test_trained_tiny.py, which runs them
through the served stack; this runs them in process on the torch reference pipeline, to
judge a training run before its weights are installed:

    python -m t2vserve.train.evaluate --weights build/train-tiny --out build/train-tiny/eval.json
"""

import argparse
import json
import time
from pathlib import Path

from t2vserve.train.measures import contact_sheet, dominant_hue, motion_energy
from t2vserve.train.synthetic import COLOURS

ZH_PRODUCT = {"cup": "杯子", "box": "盒子", "bottle": "瓶子", "ball": "球"}
SEED = 3  # the seed every evaluation clip uses
# what a run must reach to be installed, and what the served-stack test asserts
MIN_COLOUR_HITS = 13      # of 16, at the default guidance
MIN_GUIDANCE_DROP = 3     # fewer colour hits at guidance 1.0
MIN_MOTION_PAIRS = 7      # of 8, rotating moves more than still


def colour_prompt(colour: str, language: str) -> str:
    if language == "en":
        return f"a {colour} cup on a white studio background, still"
    return f"白色摄影棚里静止的{COLOURS[colour]['zh']}杯子"


def motion_prompt(product: str, motion: str, language: str) -> str:
    if language == "en":
        verb = "rotating slowly" if motion == "rotating" else "standing still"
        return f"a red {product} {verb} on a wooden table"
    verb = "缓慢旋转" if motion == "rotating" else "静止不动"
    return f"红色{ZH_PRODUCT[product]}在木桌上{verb}"


def colour_hits(generate, guidance: float) -> list[tuple[str, str, str]]:
    """(wanted, language, got) for the 16 colour prompts; generate(prompt, guidance) -> frames."""
    return [(colour, language, dominant_hue(generate(colour_prompt(colour, language), guidance))[0])
            for colour in COLOURS for language in ("en", "zh")]


def motion_pairs(generate, guidance: float) -> list[tuple[str, str, float, float]]:
    """(product, language, rotating energy, still energy) for the 8 pairs."""
    return [(product, language,
             motion_energy(generate(motion_prompt(product, "rotating", language), guidance)),
             motion_energy(generate(motion_prompt(product, "still", language), guidance)))
            for product in ZH_PRODUCT for language in ("en", "zh")]


def evaluate(generate, guidance: float = 5.0) -> dict:
    at_default = colour_hits(generate, guidance)
    at_one = colour_hits(generate, 1.0)
    pairs = motion_pairs(generate, guidance)
    return {
        "guidance": guidance,
        "colour_hits": sum(w == g for w, _, g in at_default),
        "colour_hits_guidance_1": sum(w == g for w, _, g in at_one),
        "motion_pairs_ordered": sum(r > s for _, _, r, s in pairs),
        "colour": at_default, "colour_guidance_1": at_one,
        "motion": [(p, lang, round(r, 5), round(s, 5)) for p, lang, r, s in pairs],
    }


def main(argv=None) -> int:
    from t2vserve.pipeline import Pipeline
    from t2vserve.presets import TINY_WEIGHTS, build_components, trained_tiny_available
    from t2vserve.schema import GenerationRequest

    ap = argparse.ArgumentParser(prog="python -m t2vserve.train.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(TINY_WEIGHTS), help="folder of trained tiny weights")
    ap.add_argument("--out", help="write the figures here (JSON)")
    ap.add_argument("--sheet", help="also write a contact sheet of the English colour clips (PNG)")
    ap.add_argument("--require", action="store_true",
                    help="exit 1 unless the run passes what tests/integration/test_trained_tiny.py "
                    f"asserts (colour >= {MIN_COLOUR_HITS}/16, {MIN_GUIDANCE_DROP} fewer at guidance 1, "
                    f"rotating > still >= {MIN_MOTION_PAIRS}/8)")
    args = ap.parse_args(argv)
    if not trained_tiny_available(args.weights):
        raise SystemExit(f"no trained weights in {args.weights} (run `make train-tiny`)")
    pipe = Pipeline.from_components(build_components("tiny", weights_dir=args.weights))
    defaults = GenerationRequest(prompt="x")
    shown = []

    def generate(prompt, guidance):
        frames = pipe.generate(GenerationRequest(prompt=prompt, guidance_scale=guidance,
                                                 seed=SEED).validate())
        if guidance == defaults.guidance_scale and prompt.isascii() and len(shown) < 8:
            shown.append((frames, prompt))
        return frames

    t0 = time.perf_counter()
    result = evaluate(generate, defaults.guidance_scale)
    print(f"colour at guidance {result['guidance']}: {result['colour_hits']}/16; at 1.0: "
          f"{result['colour_hits_guidance_1']}/16; rotating > still: "
          f"{result['motion_pairs_ordered']}/8 ({time.perf_counter() - t0:.0f} s)")
    misses = [c for c in result["colour"] if c[0] != c[2]]
    print(f"colour misses (wanted, language, got): {misses}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.sheet:
        contact_sheet([f for f, _ in shown], [p for _, p in shown], args.sheet)
    failed = [what for what, ok in (
        (f"colour < {MIN_COLOUR_HITS}/16", result["colour_hits"] >= MIN_COLOUR_HITS),
        (f"guidance 1.0 not {MIN_GUIDANCE_DROP} below",
         result["colour_hits_guidance_1"] <= result["colour_hits"] - MIN_GUIDANCE_DROP),
        (f"rotating > still < {MIN_MOTION_PAIRS}/8",
         result["motion_pairs_ordered"] >= MIN_MOTION_PAIRS)) if not ok]
    if args.require and failed:
        print(f"not good enough to install: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
