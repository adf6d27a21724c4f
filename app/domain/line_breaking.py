"""Chinese line breaking (kinsoku) for the certificate text that xhtml2pdf draws.

xhtml2pdf 0.2.28 wraps CJK text in two places. reportlab 5.1's
`textsplit.dumbSplit` breaks a paragraph of one text fragment, and xhtml2pdf's
`reportlab_paragraph.cjkFragSplit` breaks one of several fragments (a
`fontrun` span around a character the primary font lacks makes more than
one). Both fill a line character by character and look only at the character
that overflows: they hang it in the right margin when it cannot start a line.
So a run such as "。”" still lets ” start a line, and an opening mark such as
“ can end one. `install` replaces both functions with ones that choose every
break with `next_line_start`.
"""

from __future__ import annotations

from collections.abc import Sequence
from unicodedata import category

from reportlab.lib import textsplit
from reportlab.rl_config import _FUZZ
from xhtml2pdf import reportlab_paragraph
from xhtml2pdf.reportlab_paragraph import ParaLines, cjkU, makeCJKParaLine

# Chinese punctuation that must not start a line: the pause and stop marks,
# closing quotes and brackets, and the connector and separator marks.
# reportlab 5.1's kinsoku table (textsplit.ALL_CANNOT_START) is Japanese and
# lacks most of them, the full-width comma among them.
CHINESE_CANNOT_START = "，；：？！》〉〗〙〛”’｝～·．"
# Opening brackets that reportlab's table of characters that cannot end a
# line (textsplit.ALL_CANNOT_END) lacks.
CHINESE_CANNOT_END = "(〖〘〚"

CANNOT_START = frozenset(textsplit.ALL_CANNOT_START + CHINESE_CANNOT_START)
CANNOT_END = frozenset(textsplit.ALL_CANNOT_END + CHINESE_CANNOT_END)


def can_break_before(text: Sequence[str], index: int) -> bool:
    """Return whether a line may end between text[index - 1] and text[index]."""
    return text[index] not in CANNOT_START and text[index - 1] not in CANNOT_END


def next_line_start(text: Sequence[str], line_start: int, overflow: int) -> int:
    """Return the index of the first character of the line after the one at `line_start`.

    text[line_start:overflow] fits on the line and text[overflow] does not.
    One character that cannot start a line hangs in the right margin, as in
    reportlab, when the character after it may start the next line.
    Otherwise the break moves back to the nearest place where the line does
    not end with an opening mark and the next line does not start with a
    closing one, so "法规。”" moves to the next line whole. A line with no
    such place breaks at the overflow, hanging a closing mark there.
    """
    if text[overflow] in CANNOT_START and (overflow + 1 == len(text) or can_break_before(text, overflow + 1)):
        return overflow + 1
    for index in range(overflow, line_start, -1):
        if can_break_before(text, index):
            return index
    if text[overflow] in CANNOT_START:
        return overflow + 1
    return max(overflow, line_start + 1)


def _latin_word_start(text: Sequence[str], line_start: int, overflow: int) -> int:
    """Move an overflow inside Latin text back to the start of its word.

    reportlab's dumbSplit rule: the word starts after the nearest space or
    CJK character, looking back at most half the line. Without one the break
    stays inside the word.
    """
    char = text[overflow]
    if not char or ord(char) >= 0x3000:
        return overflow
    limit = (line_start + overflow + 1) >> 1
    for index in range(overflow - 1, limit, -1):
        char = text[index]
        # An empty character is xhtml2pdf's zero-width placeholder for an empty fragment.
        if char and (category(char) == "Zs" or ord(char) >= 0x3000):
            return index + 1
    return overflow


def _line_width(max_widths: Sequence[float], line_number: int) -> float:
    return max_widths[min(line_number, len(max_widths) - 1)]


def break_lines(text: Sequence[str], widths: Sequence[float], max_widths: Sequence[float]) -> list[tuple[int, int]]:
    """Fill lines with as many characters as fit and return each line's (start, end) indices.

    Line n is max_widths[n] wide, and the last width repeats. `widths` are
    the characters' advance widths, in the same unit.
    """
    lines: list[tuple[int, int]] = []
    line_start = index = 0
    used = 0.0
    while index < len(text):
        used += widths[index]
        if used > _line_width(max_widths, len(lines)) + _FUZZ and used > 0:
            overflow = _latin_word_start(text, line_start, index)
            end = next_line_start(text, line_start, overflow)
            lines.append((line_start, end))
            line_start = index = end
            used = 0.0
        else:
            index += 1
    if line_start < len(text):
        lines.append((line_start, len(text)))
    return lines


def dumb_split(word: str, widths: Sequence[float], max_widths: float | Sequence[float]) -> list[list]:
    """Break one text run into lines: reportlab's `textsplit.dumbSplit` with Chinese kinsoku.

    Returns [extra_space, text] per line, as dumbSplit does: the unused width
    (negative for a line with a hanging mark) and the text, stripped of
    surrounding spaces except on the last line.
    """
    if not isinstance(max_widths, (list, tuple)):
        max_widths = [max_widths]
    lines: list[list] = []
    for start, end in break_lines(word, widths, max_widths):
        extra_space = _line_width(max_widths, len(lines)) - sum(widths[start:end])
        text = word[start:end]
        lines.append([extra_space, text if end == len(word) else text.strip()])
    return lines


def cjk_frag_split(frags: list, max_widths: Sequence[float], calc_bounds: bool, encoding: str = "utf8") -> ParaLines:
    """Break a paragraph of several fragments into lines: xhtml2pdf's `cjkFragSplit` with Chinese kinsoku."""
    chars: list[cjkU] = []
    for frag in frags:
        text = frag.text
        if not isinstance(text, str):
            text = text.decode(encoding)
        if text:
            chars.extend(cjkU(char, frag, encoding) for char in text)
        else:
            chars.append(cjkU(text, frag, encoding))
    widths = [char.width for char in chars]
    lines = []
    for start, end in break_lines(chars, widths, max_widths):
        extra_space = _line_width(max_widths, len(lines)) - sum(widths[start:end])
        lines.append(makeCJKParaLine(chars[start:end], extra_space, calc_bounds))
    return ParaLines(kind=1, lines=lines)


def install() -> None:
    """Make reportlab and xhtml2pdf break CJK paragraphs with `break_lines`.

    Both callers look the functions up in their modules at call time:
    `textsplit.wordSplit` calls `dumbSplit`, and xhtml2pdf's
    `Paragraph.breakLinesCJK` calls `cjkFragSplit`.

    NOTE: reportlab's own `platypus.paragraph.cjkFragSplit` is left as it is,
    so a reportlab Paragraph of several fragments still breaks without these rules.
    """
    textsplit.dumbSplit = dumb_split
    reportlab_paragraph.cjkFragSplit = cjk_frag_split
