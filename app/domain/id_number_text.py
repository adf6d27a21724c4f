"""Find whole resident ID numbers in free text as people type them, and mask them in place.

Staff write ID numbers into reasons and notes in several forms: plain
(`500101199001011010`), attached to letters (`ID500101199001011010`), in
full-width digits (`５００１…`) or split by spaces or hyphens
(`500101 19900101 1010`). Each character is compared after NFKC
normalisation, so full-width digits, the full-width X and the ideographic
space count as their ASCII forms, and the mask is applied to the original
characters, so the rest of the text keeps its spelling.

This module does not import Flask.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date

ID_LENGTH = 18
# Characters kept at each end of a masked number, as domain.identity.mask_id_number keeps them.
KEPT = 4
# Separators tolerated between groups of digits, after NFKC (which maps U+3000 to a space and U+FF0D to "-").
SEPARATORS = frozenset(" \t-\u2010\u2011\u2012\u2013\u2014\u2212")
# More separators than this in a row end a run, so distant numbers are not joined.
MAX_SEPARATOR_RUN = 2
# 17 decimal digits (full-width ones included) joined by short separators, which every ID number
# contains: text without such a run is returned at once. NOTE: characters that only NFKC turns
# into digits (circled ①, superscript ²) are not decimal digits, so numbers typed with them are missed.
_CANDIDATE = re.compile(r"\d(?:[\s\-\u2010-\u2014\u2212\uff0d]{0,2}\d){16}")


@dataclass
class _Group:
    """Consecutive ID characters: their original indices and their ASCII forms."""

    indices: list[int]
    text: str


def _ascii_form(char: str) -> str:
    normal = unicodedata.normalize("NFKC", char)
    return normal if len(normal) == 1 else char


def _runs(text: str) -> list[list[_Group]]:
    """Split `text` into runs of digit groups joined only by short separators.

    A group is digits optionally ended by an X. An X, or any character that is
    neither a digit nor a separator, ends the run.
    """
    forms = [_ascii_form(char) for char in text]
    runs: list[list[_Group]] = []
    current: list[_Group] = []
    index = 0
    while index < len(text):
        if not forms[index].isascii() or not forms[index].isdigit():
            index += 1
            continue
        group = _Group([], "")
        while index < len(text) and forms[index].isascii() and forms[index].isdigit():
            group.indices.append(index)
            group.text += forms[index]
            index += 1
        ended_by_x = index < len(text) and forms[index] in "Xx"
        if ended_by_x:
            group.indices.append(index)
            group.text += forms[index].upper()
            index += 1
        current.append(group)

        gap = 0
        while index + gap < len(text) and forms[index + gap] in SEPARATORS:
            gap += 1
        next_is_digit = index + gap < len(text) and forms[index + gap].isascii() and forms[index + gap].isdigit()
        if ended_by_x or not (0 < gap <= MAX_SEPARATOR_RUN and next_is_digit):
            runs.append(current)
            current = []
        index += gap
    if current:
        runs.append(current)
    return runs


def _is_id_shape(candidate: str) -> bool:
    return (
        len(candidate) == ID_LENGTH
        and candidate[0] in "123456789"
        and candidate[:-1].isdigit()
        and (candidate[-1].isdigit() or candidate[-1] == "X")
    )


def _has_birth_date(candidate: str) -> bool:
    try:
        born = date(int(candidate[6:10]), int(candidate[10:12]), int(candidate[12:14]))
    except ValueError:
        return False
    return 1900 <= born.year <= 2100


def _id_positions(run: list[_Group]) -> list[list[int]]:
    """Return the original indices of each ID number in `run`, one list per number.

    One group of exactly 18 characters counts whatever its digits. Several
    groups joined into 18 characters count only when positions 7 to 14 are a
    birth date, so a certificate number followed by a short number is left alone.
    A group longer than 18 characters is another kind of number and is skipped.
    """
    found = []
    start = 0
    while start < len(run):
        length = 0
        matched = False
        for end in range(start, len(run)):
            length += len(run[end].text)
            if length > ID_LENGTH:
                break
            if length == ID_LENGTH:
                candidate = "".join(group.text for group in run[start:end + 1])
                if _is_id_shape(candidate) and (end == start or _has_birth_date(candidate)):
                    found.append([index for group in run[start:end + 1] for index in group.indices])
                    start = end + 1
                    matched = True
                break
        if not matched:
            start += 1
    return found


def mask_id_numbers_in_text(text: str) -> str:
    """Return `text` with the middle characters of every whole ID number replaced by asterisks.

    The first and last four characters of each number and every separator stay
    as typed, e.g. `5001** ******** 1010` for `500101 19900101 1010`, except that
    a final lower-case x is written X, as domain.identity.mask_id_number writes it.
    """
    if not _CANDIDATE.search(text):
        return text
    masked = list(text)
    for run in _runs(text):
        for positions in _id_positions(run):
            for index in positions[KEPT:-KEPT]:
                masked[index] = "*"
            if masked[positions[-1]] == "x":
                masked[positions[-1]] = "X"
    return "".join(masked)
