"""The OpenAI CLIP byte-level BPE tokenizer (as used by SLIP, SynthCLIP and DiffCLIP).

    tok = Tokenizer()
    ids = tok(["a photo of a cat.", "a dog"])    # [2, 77] int32: SOT, BPE ids, EOT, zero padding

Text is cleaned as the reference does (``ftfy.fix_text``, a required dependency; HTML entities
unescaped twice; whitespace runs collapsed), lower-cased, split into
words with the OpenAI rule (special tokens, English contractions, letter runs, single digits,
runs of other symbols), and each word's UTF-8 bytes are merged with the 48,894 BPE merges of
``bpe_simple_vocab_16e6.txt.gz``.
Vocabulary: 256 byte symbols, the same 256 with the end-of-word marker ``</w>``, one symbol per
merge, then ``<|startoftext|>`` = 49406 and ``<|endoftext|>`` = 49407 (49,408 in all).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import os
import re
import unicodedata
from collections.abc import Sequence

import ftfy
import numpy as np

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
SOT_ID = 49406
EOT_ID = 49407
PAD_ID = 0
CONTEXT_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2  # the merges CLIP uses: the first 48,894 of the file
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
_END_OF_WORD = "</w>"
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


def default_vocab_path() -> str:
    """The vocabulary shipped with diffjax (``diffjax/assets/bpe_simple_vocab_16e6.txt.gz``)."""
    return str(importlib.resources.files("diffjax") / "assets" / VOCAB_FILE)


@functools.cache
def byte_symbols() -> tuple[str, ...]:
    """The printable stand-in for each byte value 0..255 (GPT-2 / CLIP byte-level BPE).

    Bytes that are visible Latin-1 characters ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for
    themselves; the other 68 bytes take the code points 256, 257, … in byte order, so no symbol
    is whitespace or a control character.
    """
    visible = set(range(ord("!"), ord("~") + 1))
    visible |= set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = [], 256
    for b in range(256):
        if b in visible:
            symbols.append(chr(b))
        else:
            symbols.append(chr(extra))
            extra += 1
    return tuple(symbols)


def _base_vocabulary() -> list[str]:
    """The 256 byte symbols in CLIP's vocabulary order: visible bytes first, then the rest."""
    symbols = byte_symbols()
    visible = [b for b in range(256) if ord(symbols[b]) == b]
    hidden = [b for b in range(256) if ord(symbols[b]) != b]
    return [symbols[b] for b in visible + hidden]


def clean_text(text: str) -> str:
    """The reference clean-up: ``ftfy.fix_text``, HTML-unescape twice, collapse whitespace,
    strip, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


def _kind(ch: str) -> str:
    """'L' letter, 'N' number, 'S' whitespace, 'O' anything else (Unicode general categories).

    U+0345 COMBINING GREEK YPOGEGRAMMENI counts as whitespace: the reference compiles its pattern
    case-insensitively, so the negated class excludes it (it case-folds to the letter ι) while
    ``\\p{L}`` does not match it; no alternative matches and the reference drops it.
    """
    if ch.isspace() or ch == "\u0345":
        return "S"
    cat = unicodedata.category(ch)[0]
    return cat if cat in "LN" else "O"


def split_words(text: str) -> list[str]:
    """The OpenAI CLIP pre-tokenisation of (cleaned) ``text``.

    Equivalent to ``regex.findall`` of the alternation ``<|startoftext|>`` | ``<|endoftext|>`` |
    ``'s|'t|'re|'ve|'m|'ll|'d`` | ``\\p{L}+`` | ``\\p{N}`` | ``[^\\s\\p{L}\\p{N}]+`` written as a
    scanner, so the standard library suffices (``re`` has no ``\\p{…}`` classes).
    """
    words, i, n = [], 0, len(text)
    while i < n:
        special = next((s for s in (SOT, EOT) if text.startswith(s, i)), None)
        if special is None:
            special = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
        if special is not None:
            words.append(special)
            i += len(special)
            continue
        kind = _kind(text[i])
        if kind == "S":
            i += 1
            continue
        j = i + 1
        if kind == "L":
            while j < n and _kind(text[j]) == "L":
                j += 1
        elif kind == "O":
            while j < n and _kind(text[j]) == "O":
                j += 1
        words.append(text[i:j])  # a number is a single character
        i = j
    return words


class Tokenizer:
    """CLIP byte-level BPE tokenizer.

    Args:
      vocab_path: the gzipped merges file; default: the copy shipped with diffjax.
      context_length: default sequence length of :meth:`__call__` (77 for the released models).
    """

    def __init__(self, vocab_path: str | os.PathLike | None = None, context_length: int = 77):
        path = vocab_path if vocab_path is not None else default_vocab_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"BPE vocabulary {path} does not exist")
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                lines = f.read().split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read BPE vocabulary {path}: {e}") from e
        # Line 0 is a version header; the merges follow, one "left right" pair per line.
        merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(
                f"{path} is not the CLIP vocabulary: expected {NUM_MERGES} merge lines of two "
                "symbols each"
            )
        base = _base_vocabulary()
        vocab = base + [s + _END_OF_WORD for s in base] + ["".join(m) for m in merges]
        vocab += [SOT, EOT]
        self.encoder = {s: i for i, s in enumerate(vocab)}
        self.decoder = vocab
        self.merge_rank = {m: i for i, m in enumerate(merges)}
        self.context_length = int(context_length)
        self._byte_symbols = byte_symbols()
        self._symbol_bytes = {s: b for b, s in enumerate(self._byte_symbols)}
        self._cache = {SOT: [SOT], EOT: [EOT]}
        if self.encoder[SOT] != SOT_ID or self.encoder[EOT] != EOT_ID:
            raise ValueError(f"{path} does not give the CLIP special-token ids 49406/49407")

    @property
    def vocab_size(self) -> int:
        return len(self.decoder)

    def bpe(self, word: str) -> list[str]:
        """BPE symbols of one pre-token (already mapped to byte symbols)."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word[:-1]) + [word[-1] + _END_OF_WORD]
        while len(parts) > 1:
            pairs = [(parts[k], parts[k + 1]) for k in range(len(parts) - 1)]
            best = min(pairs, key=lambda p: self.merge_rank.get(p, NUM_MERGES))
            if best not in self.merge_rank:
                break
            merged, k = [], 0
            while k < len(parts):
                if k + 1 < len(parts) and (parts[k], parts[k + 1]) == best:
                    merged.append(parts[k] + parts[k + 1])
                    k += 2
                else:
                    merged.append(parts[k])
                    k += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without SOT/EOT."""
        ids = []
        for word in split_words(clean_text(text)):
            symbols = "".join(self._byte_symbols[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(symbols))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (SOT/EOT/padding dropped; word ends become spaces)."""
        symbols = "".join(self.decoder[i] for i in ids if i not in (PAD_ID, SOT_ID, EOT_ID))
        words = symbols.split(_END_OF_WORD)
        raw = b" ".join(bytes(self._symbol_bytes[c] for c in w) for w in words)
        return raw.decode("utf-8", errors="replace").strip()

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        """Token ids [len(texts), context] int32 (``[context]`` for a single string).

        Each row is SOT, the BPE ids, EOT, then zeros. Over-long texts keep their first
        ``context − 2`` BPE ids and **always end in EOT** (the reference cuts at ``context`` and
        loses EOT, which then breaks the argmax-EOT pooling).
        """
        ctx = self.context_length if context_length is None else int(context_length)
        if ctx < 2:
            raise ValueError(f"context_length must be >= 2 (SOT and EOT), got {ctx}")
        single = isinstance(texts, str)
        if single:
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a string or a sequence of strings")
        out = np.full((len(texts), ctx), PAD_ID, np.int32)
        for row, text in enumerate(texts):
            ids = [SOT_ID] + self.encode(text)[: ctx - 2] + [EOT_ID]
            out[row, : len(ids)] = ids
        return out[0] if single else out


@functools.cache
def default_tokenizer() -> Tokenizer:
    """A shared :class:`Tokenizer` on the shipped vocabulary (loading it takes ~0.3 s)."""
    return Tokenizer()
