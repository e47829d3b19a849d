"""The CLIP BPE tokenizer against ids from an independent implementation.

Expected ids come from ``open_clip.tokenizer.SimpleTokenizer`` of open_clip_torch 3.3.0 (which
uses the ``regex`` module and ftfy), run once outside this project, and a few are re-derived here
from the merges file by hand.
"""

import gzip
import hashlib

import numpy as np
import pytest

from diffjax.clip.tokenizer import (
    EOT_ID,
    SOT_ID,
    Tokenizer,
    byte_symbols,
    default_tokenizer,
    default_vocab_path,
    split_words,
)

VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

# (text, open_clip SimpleTokenizer().encode(text))
OPEN_CLIP_IDS = [
    ("a photo of a cat.", [320, 1125, 539, 320, 2368, 269]),
    ("a bad photo of the dog.", [320, 2103, 1125, 539, 518, 1929, 269]),
    ("A Photo Of A CAT!!", [320, 1125, 539, 320, 2368, 748]),
    ("itap of a goldfish.", [529, 2728, 539, 320, 40293, 269]),
    ("a origami airplane.", [320, 31832, 16451, 269]),
    (
        "the cat's toy isn't here, they've gone; we'll see what i'd do & I'm",
        [
            518,
            2368,
            568,
            5988,
            2923,
            713,
            763,
            267,
            889,
            1200,
            3601,
            282,
            649,
            1342,
            862,
            768,
            328,
            1896,
            818,
            261,
            328,
            880,
        ],
    ),
    ("3.14159 and 42 apples", [274, 269, 272, 275, 272, 276, 280, 537, 275, 273, 14032]),
    ("café naïve résumé", [15304, 1097, 35689, 563, 29106, 7054, 4166]),
    ("cafe\u0301", [15304]),  # decomposed é: NFC first
    ("x² + ½", [343, 41175, 266, 33613]),
    ("日本語", [39121, 44353, 34002, 508]),
    ("emoji \U0001f600 test", [16327, 7334, 1628]),
    ("&amp;lt;html&amp;gt; &quot;quoted&quot;", [283, 18231, 285, 257, 27706, 257]),
    ("!'s ''hello'' --- ...", [13222, 338, 8445, 3306, 8445, 11079, 678]),
    ("hello   world\n\tfoo", [3306, 1002, 23435]),
    ("naïve x_y_z", [1097, 35689, 563, 343, 318, 344, 318, 345]),
    ("АБВ дом", [31090, 109, 140, 366, 140, 112, 20978, 376]),
    ("Supercalifragilisticexpialidocious", [1642, 2857, 13093, 2076, 5868, 26850, 835, 639, 38466]),
]


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def test_vocabulary_file_is_the_clip_release():
    with open(default_vocab_path(), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == VOCAB_SHA256


@pytest.mark.parametrize("text,ids", OPEN_CLIP_IDS)
def test_ids_match_open_clip(tok, text, ids):
    assert tok.encode(text) == ids


def test_ids_derived_from_the_merges_file(tok):
    # Vocabulary layout: 256 byte symbols, 256 with "</w>", then one symbol per merge line.
    with gzip.open(default_vocab_path(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1:]
    first_merge_id = 512
    for word in ("cat", "photo", "dog"):
        line = next(i for i, m in enumerate(merges) if m.replace(" ", "") == word + "</w>")
        assert tok.encode(word) == [first_merge_id + line]
    # 'a' is byte 97, the 65th visible byte ('!' = 33 is id 0): 'a' = 64, 'a</w>' = 256 + 64.
    assert tok.encode("a") == [256 + 97 - 33]
    assert tok.encoder["!"] == 0 and tok.vocab_size == 49408


def test_sequences_pad_and_keep_eot(tok):
    ids = tok(["a photo of a cat.", "a " * 100 + "cat"])
    assert ids.shape == (2, 77) and ids.dtype == np.int32
    np.testing.assert_array_equal(ids[0, :8], [SOT_ID, 320, 1125, 539, 320, 2368, 269, EOT_ID])
    assert not ids[0, 8:].any()
    # Over-long: first 75 BPE ids, then EOT in the last slot (the reference would drop EOT).
    np.testing.assert_array_equal(ids[1], [SOT_ID] + [320] * 75 + [EOT_ID])
    single = tok("a dog", context_length=5)
    np.testing.assert_array_equal(single, [SOT_ID, 320, 1929, EOT_ID, 0])


def test_special_tokens_and_decode(tok):
    assert tok.encode("<|startoftext|>hi<|endoftext|>") == [SOT_ID, 1883, EOT_ID]
    # As the reference: every BPE word ends in "</w>", so punctuation comes back space-separated.
    assert tok.decode(tok("a photo of the small truck.")) == "a photo of the small truck ."
    assert tok.decode(tok.encode("Café ½")) == "café ½"


def test_pre_tokenisation_rule():
    assert split_words("they're 12 apples!!'s") == ["they", "'re", "1", "2", "apples", "!!'", "s"]
    assert split_words("x²") == ["x", "²"]  # ² is a number (No), not a letter
    assert sorted(map(ord, byte_symbols())) == sorted(
        set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256)) | set(range(256, 324))
    )


def test_bad_input(tok, tmp_path):
    with pytest.raises(TypeError):
        tok(["ok", 3])
    with pytest.raises(ValueError, match="context_length"):
        tok("a", context_length=1)
    with pytest.raises(FileNotFoundError):
        Tokenizer(tmp_path / "missing.txt.gz")
    bad = tmp_path / "bad.txt.gz"
    with gzip.open(bad, "wt") as f:
        f.write("#version\na b\n")
    with pytest.raises(ValueError, match="not the CLIP vocabulary"):
        Tokenizer(bad)
    (tmp_path / "corrupt.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="cannot read"):
        Tokenizer(tmp_path / "corrupt.gz")
