"""ftfy's default ``fix_text`` rewritten from its documented rules, for installs without ftfy.

    from diffjax.clip.textfix import fix_text
    fix_text("donâ€™t use the ﬁ ligature")    # "don't use the fi ligature"

The CLIP reference tokenizer cleans every string with ``ftfy.fix_text`` (default configuration).
diffjax uses ftfy when it is installed; this module is what the tokenizer uses when it is not
(e.g. an image installed with ``pip install --no-deps``). It applies ftfy's default steps in
ftfy's order, to each line separately, repeating them until the line stops changing:

1. HTML entities ending in ``;`` (``&amp;``, ``&#8217;``, ``&EACUTE;``), unless the text holds a
   ``<`` (then it is taken for real HTML and left escaped, here and on every later line);
2. mojibake repair (below);
3. C1 controls U+0080–U+009F read as Windows-1252 (the five bytes 1252 leaves undefined stay);
4. Latin ligatures and digraphs split (``ﬁ`` → ``fi``, ``ǅ`` → ``Dž``; ``æ``/``œ`` are kept);
5. full-width and half-width forms to their normal width, U+3000 to a space;
6. curly quotes straightened (U+2018–U+201B and U+02BC → ``'``, U+201C–U+201F → ``"``);
7. CRLF, CR, U+2028, U+2029 and U+0085 to ``\\n``;
8. UTF-16 surrogate pairs joined, lone surrogates to U+FFFD;
9. ANSI terminal escapes (ESC ``[`` digits/semicolons letter) removed;
10. invisible controls removed: C0 except tab, LF, FF, CR; DEL; U+206A–U+206F; the BOM U+FEFF;
    U+FFF9–U+FFFC;
11. NFC normalisation.

Steps 1 and 3–11 are exact. Step 2 is where ftfy is a heuristic driven by tables of "bad"
character pairs; diffjax does not reproduce those tables but follows ftfy's procedure with a
detector of its own. Text is taken for mojibake when it holds a C1 control (ftfy's detector
always fires on one) or a run of characters that is the Latin-1 / Windows-1252 rendering of
valid UTF-8 and is a 3- or 4-byte sequence, two sequences in a row, a pair led by ``Â``/``Ã``,
a pair holding a C1 control, or a pair ending in a quote or dash before a letter (``Å“uvre``);
a lone pair such as ``É…``, and a lone ``â„x`` (``â„¢`` for ™, which ftfy leaves too), are not
evidence. Then, as ftfy does, the whole line is read back as UTF-8 (from Latin-1, else
Windows-1252), else each run that is evidence by itself (not such a quote-or-dash pair) is
decoded alone; this repeats, so doubly mis-decoded text is repaired too. On seeded random
mojibake the result equals ftfy's on 99.5 % of strings
(``python -m benchmarks.textfix_agreement``); docs/clip.md lists what differs.
"""

from __future__ import annotations

import html
import html.entities
import re
import unicodedata

_UNDEFINED_1252 = frozenset((0x81, 0x8D, 0x8F, 0x90, 0x9D))


def _byte_1252(b: int) -> str:
    """The character Windows-1252 shows for byte ``b``; undefined bytes read as Latin-1."""
    return chr(b) if b in _UNDEFINED_1252 else bytes([b]).decode("cp1252")


def _html_entities() -> dict[str, str]:
    """``&name;`` → text for every HTML5 entity written with its semicolon, plus the upper-case
    spelling of each lower-case name that is not itself an entity (``&EACUTE;`` → ``É``)."""
    table = {}
    for name, value in html.entities.html5.items():
        if not name.endswith(";"):
            continue
        table["&" + name] = value
        upper = "&" + name.upper()
        if name == name.lower() and html.unescape(upper) == upper:
            table[upper] = value.upper()
    return table


_ENTITIES = _html_entities()
_C1_RE = re.compile("[\x80-\x9f]")
_ENTITY_RE = re.compile(r"&#?[0-9A-Za-z]{1,24};")


def _entity(match: re.Match) -> str:
    token = match.group(0)
    if token in _ENTITIES:
        return _ENTITIES[token]
    if token.startswith("&#"):
        value = html.unescape(token)
        return token if ";" in value else value  # only a reference consumed whole
    return token


def unescape_html(text: str) -> str:
    """Decode ``&…;`` entities and numeric references (never ones without their semicolon)."""
    return _ENTITY_RE.sub(_entity, text)


# Characters whose Latin-1 / Windows-1252 byte is a UTF-8 continuation byte 0x80–0xBF.
_CONTINUATION = {chr(b): b for b in range(0x80, 0xC0)}
_CONTINUATION.update({_byte_1252(b): b for b in range(0x80, 0xA0)})
_CONT = "[" + "".join(sorted(_CONTINUATION)) + "]"
# A run of UTF-8 multi-byte sequences rendered one character per byte: lead C2–DF, E0–EF or
# F0–F4 (the same characters in Latin-1 and Windows-1252) and its continuation characters.
_RUN_RE = re.compile(
    f"(?:[\xc2-\xdf]{_CONT}|[\xe0-\xef]{_CONT}{{2}}|[\xf0-\xf4]{_CONT}{{3}})+"
)


def _as_utf8(run: str) -> str | None:
    """The text whose UTF-8 bytes ``run`` shows, or None where they are not valid UTF-8."""
    try:
        return bytes(_CONTINUATION.get(c, ord(c)) for c in run).decode("utf-8")
    except UnicodeError:
        return None


_QUOTES_DASHES = frozenset("‚„…‘’“”•–—‹›")


def _decodable(run: str) -> bool:
    """Mojibake beyond reasonable doubt, decoded even where the rest of the text is not: valid
    UTF-8 and a 3- or 4-byte sequence (an accented letter followed by two or three symbols), two
    sequences in a row, a sequence led by Â/Ã (the renderings of U+0080–U+00FF) or one holding a
    C1 control. A lone pair such as ``É…`` is kept."""
    if _as_utf8(run) is None or run.startswith("â„") and len(run) == 3:
        return False  # ftfy too leaves a lone letterlike symbol (â„¢ for ™) undecoded
    return len(run) > 2 or run[0] in "ÂÃ" or bool(_C1_RE.search(run))


def _detected(text: str) -> bool:
    """Whether the text looks like mojibake: a C1 control (ftfy's detector always fires on
    one), a decodable run, or a letter, quote or dash, letter that would decode (``Å“uvre``)."""
    if _C1_RE.search(text):
        return True
    for m in _RUN_RE.finditer(text):
        run, after = m.group(0), text[m.end() : m.end() + 1]
        if _decodable(run) or (run[1] in _QUOTES_DASHES and after.isalnum()):
            return True
    return False


def _decode_run(match: re.Match) -> str:
    run = match.group(0)
    return _as_utf8(run) if _decodable(run) else run


_SLOPPY_1252 = {_byte_1252(b): b for b in range(0x80, 0x100)}


def _redecode(text: str) -> str | None:
    """``text`` read back as UTF-8 shown in Latin-1, else in Windows-1252 (undefined bytes as
    Latin-1); None where neither gives valid UTF-8."""
    try:
        return text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        pass
    if any(ord(c) >= 0x80 and c not in _SLOPPY_1252 for c in text):
        return None
    raw = bytes(ord(c) if ord(c) < 0x80 else _SLOPPY_1252[c] for c in text)
    try:
        return raw.decode("utf-8")
    except UnicodeError:
        return None


def fix_mojibake(text: str) -> str:
    """Decode UTF-8 shown as Latin-1/Windows-1252 (the rule in the module docstring)."""
    while True:
        # Detected: ftfy's detector always fires on a C1 control; ours on a suspect run.
        if not _detected(text):
            return text
        # ftfy's remedies in its order: the whole text re-read, else each decodable run alone.
        fixed = _redecode(text)
        if fixed is None:
            fixed = _RUN_RE.sub(_decode_run, text)
        if fixed == text:
            return text
        text = fixed


def fix_c1_controls(text: str) -> str:
    """C1 control characters as the Windows-1252 characters of the same byte (as browsers do)."""
    return _C1_RE.sub(lambda m: _byte_1252(ord(m.group(0))), text)


# Latin ligatures and the Serbo-Croatian/Dutch digraphs: their compatibility decomposition.
_LIGATURE_POINTS = [0x132, 0x133, 0x149, *range(0x1C4, 0x1CD), *range(0x1F1, 0x1F4)]
_LIGATURE_POINTS += range(0xFB00, 0xFB07)
LIGATURES = {
    p: unicodedata.normalize(
        "NFC", "".join(chr(int(h, 16)) for h in unicodedata.decomposition(chr(p)).split()[1:])
    )
    for p in _LIGATURE_POINTS
}
# Half- and full-width forms (U+FF01–U+FFEF) to what NFKC makes of them; the ideographic space.
WIDTHS = {0x3000: " "}
WIDTHS.update(
    {
        p: unicodedata.normalize("NFKC", chr(p))
        for p in range(0xFF01, 0xFFF0)
        if unicodedata.normalize("NFKC", chr(p)) != chr(p)
    }
)
QUOTES = {0x2BC: "'", **{p: "'" for p in range(0x2018, 0x201C)}}
QUOTES.update({p: '"' for p in range(0x201C, 0x2020)})
CONTROLS = dict.fromkeys(
    [
        *range(0x00, 0x09),
        0x0B,
        *range(0x0E, 0x20),
        0x7F,
        *range(0x206A, 0x2070),
        0xFEFF,
        *range(0xFFF9, 0xFFFD),
    ]
)
_ANSI_RE = re.compile("\x1b\\[[0-9;]*[A-Za-z]")
_SURROGATE_PAIR_RE = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
MAX_SEGMENT = 1_000_000  # ftfy's max_decode_length
_LINE_RE = re.compile("[^\n]*\n|[^\n]+")  # ftfy's segments: split after "\n" only


def fix_line_breaks(text: str) -> str:
    """CRLF, CR, LINE/PARAGRAPH SEPARATOR and NEXT LINE to ``\\n``."""
    text = text.replace("\r\n", "\n")
    return text.translate({0x0D: "\n", 0x2028: "\n", 0x2029: "\n", 0x85: "\n"})


def fix_surrogates(text: str) -> str:
    """Join UTF-16 surrogate pairs into their code point; a lone surrogate becomes U+FFFD."""
    text = _SURROGATE_PAIR_RE.sub(
        lambda m: chr(
            0x10000 + ((ord(m.group(0)[0]) - 0xD800) << 10) + ord(m.group(0)[1]) - 0xDC00
        ),
        text,
    )
    return _SURROGATE_RE.sub("\ufffd", text)


def _fix_segment(text: str, unescape: bool) -> str:
    while True:
        before = text
        if unescape:
            text = unescape_html(text)
        text = fix_mojibake(text)
        text = fix_c1_controls(text)
        text = text.translate(LIGATURES).translate(WIDTHS).translate(QUOTES)
        text = fix_surrogates(fix_line_breaks(text))
        text = _ANSI_RE.sub("", text).translate(CONTROLS)
        text = unicodedata.normalize("NFC", text)
        if text == before:
            return text


def fix_text(text: str) -> str:
    """``ftfy.fix_text(text)`` with the default configuration (mojibake: the rule above).

    Each line (up to and including its ``\\n``; a longer one in pieces of ``MAX_SEGMENT``
    characters) is fixed on its own, as ftfy does; HTML entities stay escaped from the first
    piece holding a ``<`` onwards.
    """
    if not isinstance(text, str):
        raise TypeError(f"fix_text needs a str, got {type(text).__name__}")
    out, unescape = [], True
    for line in _LINE_RE.findall(text):
        for start in range(0, len(line), MAX_SEGMENT):
            segment = line[start : start + MAX_SEGMENT]
            unescape = unescape and "<" not in segment
            out.append(_fix_segment(segment, unescape))
    return "".join(out)
