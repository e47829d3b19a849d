"""How often diffjax's ftfy stand-in (``diffjax.clip.textfix``) cleans text differently from
``ftfy.fix_text``, and how often that changes the CLIP token ids, on seeded random text.

Families: realistic mojibake (words with accents, curly punctuation and emoji, written as UTF-8
and read back as Windows-1252 or Latin-1, once or twice, mixed with correct text), and byte
soup (random Latin-1 / Windows-1252 characters, where ftfy's heuristic decides). The awkward
strings and the other random pools are exact and tested (tests/test_tokenizer_cleanup.py).
Needs ftfy.

    python -m benchmarks.textfix_agreement [--count 20000]
"""

from __future__ import annotations

import argparse
import random
import warnings

import ftfy

from diffjax.clip import textfix, tokenizer

_WORDS = [
    "café",
    "naïve",
    "don’t",
    "“quoted”",
    "résumé",
    "Ελλάδα",
    "Москва",
    "straße",
    "señor",
    "—",
    "…",
    "€5",
    "™",
    "😀",
    "👍🏽",
    "北京",
    "Zürich",
    "œuvre",
    "½",
    "ﬁne",
    "a",
    "the",
    "photo",
]
_1252 = [textfix._byte_1252(b) for b in range(0x80, 0x100)]


def _mojibake(word: str, rng: random.Random) -> str:
    raw = word.encode("utf-8")
    for _ in range(rng.choice((1, 1, 1, 2))):
        text = "".join(
            chr(b) if b < 0x80 else (_1252[b - 0x80] if rng.random() < 0.8 else chr(b)) for b in raw
        )
        raw = text.encode("utf-8")
    return text


def families(count: int, seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    realistic, mixed, soup_latin1, soup_1252 = [], [], [], []
    for _ in range(count):
        words = rng.choices(_WORDS, k=rng.randrange(1, 6))
        realistic.append(" ".join(_mojibake(w, rng) for w in words))
        mixed.append(" ".join(_mojibake(w, rng) if rng.random() < 0.5 else w for w in words))
        n = rng.randrange(1, 12)
        soup_latin1.append("".join(chr(rng.randrange(0x20, 0x100)) for _ in range(n)))
        soup_1252.append("".join(rng.choice(_1252 + list("abc ")) for _ in range(n)))
    return {
        "mojibake (all words)": realistic,
        "mojibake (half the words)": mixed,
        "Latin-1 byte soup": soup_latin1,
        "Windows-1252 byte soup": soup_1252,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="strings per family")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tok = tokenizer.default_tokenizer()
    with_ftfy = tokenizer.ftfy
    for name, texts in families(args.count, args.seed).items():
        ours = [textfix.fix_text(t) for t in texts]
        ref = [ftfy.fix_text(t) for t in texts]
        text_differs = sum(a != b for a, b in zip(ours, ref, strict=True))
        tokenizer.ftfy = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ids_ours = [tok.encode(t) for t in texts]
        tokenizer.ftfy = with_ftfy
        ids_ref = [tok.encode(t) for t in texts]
        ids_differ = sum(a != b for a, b in zip(ids_ours, ids_ref, strict=True))
        print(
            f"{name}: {len(texts)} strings, clean-up differs on {text_differs} "
            f"({100 * text_differs / len(texts):.2f}%), ids on {ids_differ} "
            f"({100 * ids_differ / len(texts):.2f}%)"
        )


if __name__ == "__main__":
    main()
