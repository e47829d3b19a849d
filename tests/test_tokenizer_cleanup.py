"""The CLIP tokenizer's text clean-up on awkward strings: ids identical to the reference
(open_clip's ``SimpleTokenizer``, which runs ``ftfy.fix_text``), and a clear error, never other
ids, when ftfy is missing.

The expected ids were produced by ``open_clip.tokenizer.SimpleTokenizer().encode`` (open_clip_torch
3.3.0, ftfy 6.3.1); with open_clip installed they are also recomputed here.
"""

import importlib.util
import sys

import pytest

from diffjax.clip import tokenizer
from diffjax.clip.tokenizer import default_tokenizer

# (text, reference ids)
AWKWARD = [
    (
        "“curly double” and ‘curly single’ quotes",
        [257, 20795, 3200, 257, 537, 262, 20795, 2688, 262, 5808],
    ),
    (
        "don’t stop, it’s fine, we’ll see",
        [847, 713, 1691, 267, 585, 568, 3797, 267, 649, 1342, 862],
    ),
    ("the ﬁnal ﬂight of the ﬀ ligature", [518, 1755, 3795, 539, 518, 1304, 19915, 4490]),
    (
        "ＦＵＬＬ－ＷＩＤＴＨ ｔｅｘｔ １２３ and ｶﾀｶﾅ half-width",
        [
            1476,
            268,
            23571,
            4160,
            272,
            273,
            274,
            537,
            37367,
            34941,
            37367,
            2429,
            488,
            2349,
            268,
            23571,
        ],
    ),
    (
        "ǅungla ǈ ǋ titlecase digraphs",
        [67, 129, 122, 10439, 1210, 32273, 6672, 1991, 944, 894, 570, 24670],
    ),
    ("mojibake: cafÃ© naÃ¯ve donâ€™t", [617, 3252, 11878, 281, 15304, 1097, 35689, 563, 847, 713]),
    (
        "control\x00chars\x07here\x1b[31mred\x1b[0m and\x0bvertical",
        [9963, 1054, 1729, 515, 736, 672, 14293],
    ),
    ("\ufeffbyte-order mark at the start", [42798, 268, 2191, 2110, 536, 518, 1572]),
    (
        "zero\u200bwidth\u200dspace and soft\xadhyphen",
        [5848, 9844, 23571, 728, 491, 2138, 537, 3773, 22618, 1441, 745, 576],
    ),
    ("non\xa0breaking\u2003em space\u3000ideographic", [3353, 2755, 2270, 2138, 1909, 78, 4245]),
    ("line\r\nbreaks\u2028and\u2029paragraphs", [1148, 7263, 537, 24903, 16495]),
    ("é combining and Å angstrom sign", [4166, 23561, 537, 127, 354, 883, 14707, 2292]),
    ("ﬀ ﬃ ﬄ ﬅ ligatures", [1304, 1021, 328, 39490, 129, 123, 339, 554, 5314, 2288]),
    (
        "Ⅻ roman numeral ① circled ²³ superscripts",
        [158, 227, 375, 7370, 11442, 566, 158, 239, 510, 2459, 12827, 41175, 126, 367, 1642, 20109],
    ),
    ("emoji 👍🏽 with skin tone and 🇫🇷 flag", [16327, 43722, 593, 3575, 8408, 537, 16223, 4859]),
    ("&amp;amp; &lt;b&gt; &#39;quoted&#39; &nbsp;", [261, 283, 321, 285, 262, 27706, 262]),
    ("tab\tseparated\tvalues\t\t", [14724, 22163, 8857]),
    ("   leading and trailing   ", [3833, 537, 37427]),
    (
        "İstanbul ΣΊΣΥΦΟΣ straße",
        [
            328,
            16384,
            11231,
            139,
            225,
            138,
            107,
            139,
            225,
            139,
            227,
            139,
            228,
            138,
            123,
            139,
            480,
            1894,
            127,
            253,
            324,
        ],
    ),
    ("\ud83d lone surrogate", [39802, 13576, 47499, 3302]),
]


@pytest.mark.parametrize("text,ids", AWKWARD)
def test_ids_match_the_reference(text, ids):
    assert default_tokenizer().encode(text) == ids


def test_reference_recomputed():
    simple = pytest.importorskip("open_clip.tokenizer")
    ref = simple.SimpleTokenizer()
    assert [ref.encode(t) for t, _ in AWKWARD] == [ids for _, ids in AWKWARD]


def test_without_ftfy_the_tokenizer_refuses(monkeypatch):
    # A fresh copy of the module imported while `import ftfy` fails, as on an install without it.
    monkeypatch.setitem(sys.modules, "ftfy", None)
    spec = importlib.util.spec_from_file_location("tokenizer_without_ftfy", tokenizer.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.ftfy is None
    tok = module.Tokenizer()
    for text, _ in AWKWARD[:3]:
        with pytest.raises(ImportError, match="needs ftfy"):
            tok.encode(text)
