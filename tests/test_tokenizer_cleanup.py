"""The CLIP tokenizer's text clean-up on awkward strings: ids identical to the reference
(open_clip's ``SimpleTokenizer``, which, like diffjax, runs ``ftfy.fix_text``), on stored
strings and on seeded random text.

The expected ids were produced by ``open_clip.tokenizer.SimpleTokenizer().encode`` (open_clip_torch
3.3.0, ftfy 6.3.1); with open_clip installed they are also recomputed here.
"""

import random
import unicodedata

import pytest

from diffjax.clip import tokenizer
from diffjax.clip.tokenizer import default_tokenizer, split_words

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
    (
        "&ldquo;entity quotes&rdquo; &rsquo; and P&EACUTE;REZ in caps",
        [257, 28455, 5808, 257, 262, 537, 43167, 15192, 530, 23185],
    ),
    (
        "<b>html &amp; kept</b>\nnext line &amp; too",
        [283, 321, 285, 18231, 261, 7737, 34308, 321, 285, 1131, 1148, 261, 1256],
    ),
    (
        "first &amp; line\nthen <i>tag</i> &lt;",
        [874, 261, 1148, 1594, 283, 328, 285, 3640, 34308, 328, 285, 283],
    ),
    ("bell\x1b[1;32mgreen\x1b[0m text \x1b]not csi", [5417, 1901, 4160, 316, 783, 28070]),
    ("c1 \x93quoted\x94 \x85 and \x80 euro", [322, 272, 257, 27706, 257, 959, 537, 6309, 8463]),
    ("pair \ud83d\ude00 joined and \udc00 lone low", [4038, 7334, 4954, 537, 39802, 13576, 1042]),
    (
        "e\u0301 o\u0308 n\u0303 combining and \u0344",
        [4166, 37423, 127, 365, 23561, 537, 136, 230, 136, 479],
    ),
    (
        "👩\u200d👩\u200d👧 family 🏳\ufe0f\u200d🌈 and "
        "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
        [
            26304,
            26304,
            964,
            356,
            1315,
            32610,
            537,
            39690,
            175,
            254,
            223,
            100,
            175,
            254,
            223,
            95,
            175,
            254,
            223,
            98,
            175,
            254,
            223,
            106,
            175,
            254,
            223,
            100,
            175,
            254,
            223,
            379,
        ],
    ),
    (
        "汉字 かな カナ 한국어 中文，标点。",
        [
            162,
            109,
            231,
            35751,
            501,
            4813,
            36218,
            359,
            37367,
            2429,
            488,
            15197,
            250,
            31871,
            255,
            31625,
            368,
            19759,
            255,
            29032,
            485,
            267,
            162,
            254,
            229,
            163,
            224,
            373,
            38000,
        ],
    ),
    (
        "double mojibake \xc3\u0192\xc2\xa9 and \xe2\u20ac\u0153quoted\xe2\u20ac\x9d",
        [3200, 617, 3252, 11878, 4166, 537, 257, 27706, 257],
    ),
    (
        "bidi \u202ahello\u202c and \u200e marks \u2066iso\u2069",
        [717, 1618, 728, 359, 3306, 728, 361, 537, 31001, 5466, 34855, 12263, 2918],
    ),
    (
        "\u2060word joiner\ufff9annotation\ufffb\ufffc object",
        [13503, 2653, 14737, 517, 30411, 656, 14115],
    ),
    (
        "\uff71\uff72\uff73\uff74\uff75 \uff8a\uff9f\uff8b\uff9f half-width with voiced marks",
        [
            26560,
            19319,
            3909,
            99,
            3909,
            101,
            3909,
            359,
            2429,
            239,
            2429,
            498,
            2349,
            268,
            23571,
            593,
            34352,
            5466,
        ],
    ),
    (
        "ŉ Ĳssel ĳs Ǳ ǲ ǳ Ǆ ǆ Ǉ ǉ Ǌ ǌ ﬅ ﬆ",
        [
            262,
            333,
            7337,
            19373,
            7337,
            338,
            22913,
            22913,
            22913,
            67,
            129,
            378,
            67,
            129,
            378,
            32273,
            32273,
            6672,
            6672,
            129,
            123,
            339,
            545,
        ],
    ),
    (
        "\u02bcokina and \u201bhigh reversed\u201f quotes",
        [262, 1944, 1366, 537, 262, 1400, 42485, 257, 5808],
    ),
]


@pytest.mark.parametrize("text,ids", AWKWARD)
def test_ids_match_the_reference(text, ids):
    assert default_tokenizer().encode(text) == ids


def test_reference_recomputed():
    simple = pytest.importorskip("open_clip.tokenizer")
    ref = simple.SimpleTokenizer()
    assert [ref.encode(t) for t, _ in AWKWARD] == [ids for _, ids in AWKWARD]


_POOLS = {
    "ascii+controls": [chr(i) for i in range(0x00, 0x80)],
    "combining": [chr(i) for i in range(0x300, 0x370)] + list("aeiouAEIOU "),
    "any code point": None,  # uniform over U+0000..U+2FFFF
    "entities": list("&;#<amp lt gt ldquo EACUTE 0123456789x\n\r"),
    "escapes+breaks": list("\x1b[;0123m \r\n\u2028\u2029\x85\x0b\x0cab"),
    "surrogates": [chr(i) for i in range(0xD800, 0xE000, 61)] + list("ab"),
    "widths+punctuation": [chr(i) for i in range(0xFF00, 0xFFF0)]
    + [chr(i) for i in range(0x2000, 0x2070)]
    + [chr(0x3000), chr(0x2BC), "x"],
    "cjk+emoji": [chr(i) for i in range(0x4E00, 0x4E40)]
    + [chr(i) for i in range(0x1F600, 0x1F640)]
    + ["\u200d", "\ufe0f", chr(0x1F3FD), "\U000e0067", "。"],
    "ligatures+digraphs": [
        chr(i)
        for i in (
            0x132,
            0x133,
            0x149,
            *range(0x1C4, 0x1CD),
            0x1F1,
            0x1F2,
            0x1F3,
            *range(0xFB00, 0xFB07),
        )
    ]
    + list("ab "),
}


def _fuzz(pool, count, seed):
    rng = random.Random(seed)
    for _ in range(count):
        n = rng.randrange(1, 16)
        if pool is None:
            yield "".join(chr(rng.randrange(0x30000)) for _ in range(n))
        else:
            yield "".join(rng.choice(pool) for _ in range(n))


def test_ids_equal_open_clip_on_random_text():
    simple = pytest.importorskip("open_clip.tokenizer")
    ref = simple.SimpleTokenizer()
    tok = default_tokenizer()
    texts = [t for pool in _POOLS.values() for t in _fuzz(pool, 60, seed=99)]
    # Code points this Python's Unicode database leaves unassigned are classified by `regex`'s
    # newer one (docs/clip.md).
    texts = [t for t in texts if "Cn" not in map(unicodedata.category, tokenizer.clean_text(t))]
    assert len(texts) > 400
    assert [tok.encode(t) for t in texts] == [ref.encode(t) for t in texts]


def test_split_words_as_the_reference_pattern_on_every_character():
    regex = pytest.importorskip("regex")
    simple = pytest.importorskip("open_clip.tokenizer")
    pattern = simple.SimpleTokenizer().pat
    # Every code point assigned in this Python's Unicode database except private use, between a
    # letter, a digit and a symbol; U+001C–U+001F (str.isspace, not regex's \s) never survive
    # the clean-up.
    chars = [
        chr(c)
        for c in range(0x20, 0x110000)
        if unicodedata.category(chr(c)) not in ("Cn", "Co", "Cs")
    ]
    for start in range(0, len(chars), 4096):
        text = " ".join(f"x{c}y.{c}.1{c}1" for c in chars[start : start + 4096])
        assert split_words(text) == regex.findall(pattern, text)
