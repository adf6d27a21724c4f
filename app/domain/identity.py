"""Identity documents: document types, number checks, derived facts and masking.

A 居民身份证 number (GB 11643-1999) has 18 characters. They are a 6-digit area
code, the birth date as YYYYMMDD, a 3-digit sequence number whose last digit
is odd for men and even for women, and an ISO 7064 MOD 11-2 check character
in which `X` stands for 10. 港澳台居民居住证 numbers follow the same scheme with the area
codes 810000, 820000 and 830000. The other documents accepted at these exams
get a shape check only, and their holder's gender and birth month are taken
as given.
"""

from __future__ import annotations

import operator
import re
import unicodedata
from datetime import date

ID_RESIDENT = "居民身份证"
ID_HK_MACAO_PERMIT = "港澳居民来往内地通行证"
ID_TAIWAN_PERMIT = "台湾居民来往大陆通行证"
ID_PASSPORT = "护照"
ID_FOREIGN_PERMANENT = "外国人永久居留身份证"
ID_RESIDENCE_PERMIT = "港澳台居民居住证"
ID_TYPES = (
    ID_RESIDENT,
    ID_HK_MACAO_PERMIT,
    ID_TAIWAN_PERMIT,
    ID_PASSPORT,
    ID_FOREIGN_PERMANENT,
    ID_RESIDENCE_PERMIT,
)

# Other names staff give the same documents, as `_type_key` folds them.
ID_TYPE_ALIASES = {
    "身份证": ID_RESIDENT,
    "中华人民共和国居民身份证": ID_RESIDENT,
    "港澳通行证": ID_HK_MACAO_PERMIT,
    "回乡证": ID_HK_MACAO_PERMIT,
    "台胞证": ID_TAIWAN_PERMIT,
    "台湾通行证": ID_TAIWAN_PERMIT,
    "PASSPORT": ID_PASSPORT,
    "外国护照": ID_PASSPORT,
    "外国人永久居留证": ID_FOREIGN_PERMANENT,
    "居住证": ID_RESIDENCE_PERMIT,
    "港澳居民居住证": ID_RESIDENCE_PERMIT,
    "台湾居民居住证": ID_RESIDENCE_PERMIT,
}

GENDER_MALE = "男"
GENDER_FEMALE = "女"

# Province-level prefixes of GB/T 2260 area codes. Only the prefix is checked,
# because a number issued under a county code that was later retired stays
# valid for life, and a current area-code table would reject its holder.
RESIDENT_PROVINCE_CODES = frozenset(
    {"11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37",
     "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64", "65"}
)
# Area codes of 港澳台居民居住证 numbers: Hong Kong, Macao and Taiwan.
RESIDENCE_PERMIT_AREA_CODES = frozenset({"810000", "820000", "830000"})

_CHECK_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARACTERS = "10X98765432"  # indexed by the weighted sum mod 11
_ASCII_ZERO_OFFSET = ord("0") * sum(_CHECK_WEIGHTS)
_EARLIEST_BIRTH_DATE = date(1900, 1, 1)
_SEVENTEEN_DIGITS = re.compile(r"[0-9]{17}")
_GB11643_SHAPE = re.compile(r"[0-9]{17}[0-9X]")
_FIRST_GENERATION_SHAPE = re.compile(r"[0-9]{15}")
_TRAILING_NOTE = re.compile(r"\(.*\)$")

# NOTE: these shapes are broad on purpose, so they catch a name or a date typed
# into the number column without rejecting a real number. They are not the
# issuing authorities' own specifications.
_LOOSE_SHAPES = {
    ID_HK_MACAO_PERMIT: (re.compile(r"[HM][0-9]{8}([0-9]{2})?"), "H 或 M 开头，后接 8 位或 10 位数字"),
    ID_TAIWAN_PERMIT: (re.compile(r"[0-9]{8}([0-9]{2})?"), "8 位数字，旧证为 10 位数字"),
    ID_PASSPORT: (re.compile(r"[0-9A-Z]{5,17}"), "5 至 17 位字母或数字"),
    ID_FOREIGN_PERMANENT: (
        re.compile(r"[A-Z]{3}[0-9]{12}|9[0-9]{16}[0-9X]"),
        "15 位或 18 位：旧证为 3 位字母加 12 位数字，新证为 9 开头的 18 位",
    ),
}


class IdentityError(ValueError):
    """A document type or number that fails its checks. `reason` is the message for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_character(first_17_digits: str) -> str:
    """Return the GB 11643 check character for the first 17 digits of a number.

    Raise ValueError unless the argument is exactly 17 ASCII digits.
    """
    if not _SEVENTEEN_DIGITS.fullmatch(first_17_digits):
        raise ValueError(f"expected 17 ASCII digits, got {len(first_17_digits)} characters")
    # The bytes of ASCII digits are their values plus 48, so the sum runs in C without int() per digit.
    total = sum(map(operator.mul, first_17_digits.encode("ascii"), _CHECK_WEIGHTS)) - _ASCII_ZERO_OFFSET
    return _CHECK_CHARACTERS[total % 11]


def clean_id_number(text: str) -> str:
    """Return `text` in canonical form, without checking it.

    Full-width characters become ASCII and letters upper case. Whitespace,
    invisible format characters and the leading apostrophe that Excel users
    type to keep a number as text are removed.
    """
    if not (text.isascii() and text.isalnum()):
        # The slow path, for the few cells with full-width, space or invisible characters.
        text = unicodedata.normalize("NFKC", text)
        text = "".join(ch for ch in text if not ch.isspace() and unicodedata.category(ch) != "Cf")
    return text.removeprefix("'").upper()


def normalise_id_type(text: str | None) -> str:
    """Return the standard name of the document type `text` names; blank means 居民身份证.

    Raise IdentityError for a type this system does not accept.
    """
    key = _type_key(text or "")
    if not key:
        return ID_RESIDENT
    for candidate in (key, _TRAILING_NOTE.sub("", key)):
        for id_type in ID_TYPES:
            if candidate == _type_key(id_type):
                return id_type
        if candidate in ID_TYPE_ALIASES:
            return ID_TYPE_ALIASES[candidate]
    raise IdentityError(f"证件类型「{text.strip()}」不是可接受的证件类型，请填写以下之一：{'、'.join(ID_TYPES)}")


def infer_id_type(type_text: str | None, id_number: str) -> str:
    """Return the document type of a row: the one named, or else the one the number's shape shows.

    Without a named type, an 18-character number with a 港澳台居民居住证 area
    code is a residence permit, and any other number is taken as a
    居民身份证, so that its own check reports what is wrong with it.
    """
    if type_text is not None and type_text.strip():
        return normalise_id_type(type_text)
    number = clean_id_number(id_number)
    if len(number) == 18 and number[:6] in RESIDENCE_PERMIT_AREA_CODES:
        return ID_RESIDENCE_PERMIT
    return ID_RESIDENT


def uses_resident_scheme(id_type: str) -> bool:
    """Return whether numbers of `id_type` encode the holder's gender and birth date."""
    return id_type in (ID_RESIDENT, ID_RESIDENCE_PERMIT)


def normalise_id_number(text: str, id_type: str = ID_RESIDENT, *, today: date | None = None) -> str:
    """Return `text` cleaned with `clean_id_number`, after checking it is a valid number of `id_type`.

    A birth date later than `today` (default: the current date) is invalid.
    Raise IdentityError naming the number and the failed check.
    """
    number = clean_id_number(text)
    if not number:
        raise IdentityError("证件号码为空，请填写证件号码")
    if id_type in _LOOSE_SHAPES:
        _check_loose_shape(id_type, number)
    elif uses_resident_scheme(id_type):
        _check_resident_scheme(id_type, number, today or date.today())
    else:
        raise IdentityError(f"证件类型「{id_type}」不可接受，请选择以下之一：{'、'.join(ID_TYPES)}")
    return number


def resident_gender(id_number: str) -> str:
    """Return the gender that the 17th digit of a valid GB 11643 number encodes."""
    return GENDER_MALE if int(id_number[16]) % 2 == 1 else GENDER_FEMALE


def resident_birth_date(id_number: str) -> date:
    """Return the birth date that digits 7 to 14 of a valid GB 11643 number encode."""
    return date(int(id_number[6:10]), int(id_number[10:12]), int(id_number[12:14]))


def resident_birth_month(id_number: str) -> date:
    """Return the first day of the birth month of a valid GB 11643 number's holder."""
    return resident_birth_date(id_number).replace(day=1)


def mask_id_number(id_number: str) -> str:
    """Return `id_number` with its middle replaced by asterisks, for public pages and logs.

    An 18-character number keeps its first and last four characters
    (`5001**********1234`). A shorter number keeps a quarter of its length at
    each end, so at least half of every number is hidden.
    """
    number = clean_id_number(id_number)
    kept = min(len(number) // 4, 4)
    if kept == 0:
        return "*" * len(number)
    return number[:kept] + "*" * (len(number) - 2 * kept) + number[-kept:]


def _type_key(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).split()).upper()


def _check_loose_shape(id_type: str, number: str) -> None:
    shape, description = _LOOSE_SHAPES[id_type]
    if not shape.fullmatch(number):
        raise IdentityError(f"证件号码「{number}」不符合{id_type}号码的格式（{description}），请核对证件号码或证件类型")


def _check_resident_scheme(id_type: str, number: str, today: date) -> None:
    _check_gb11643_shape(number)
    is_permit_number = number[:6] in RESIDENCE_PERMIT_AREA_CODES
    if id_type == ID_RESIDENT and is_permit_number:
        raise IdentityError(
            f"证件号码「{number}」以 {number[:6]} 开头，是{ID_RESIDENCE_PERMIT}号码；请把证件类型改为{ID_RESIDENCE_PERMIT}"
        )
    if id_type == ID_RESIDENCE_PERMIT and not is_permit_number:
        raise IdentityError(
            f"证件号码「{number}」不是{ID_RESIDENCE_PERMIT}号码，居住证号码应以 810000、820000 或 830000 开头；"
            "请核对证件号码或证件类型"
        )
    if id_type == ID_RESIDENT and number[:2] not in RESIDENT_PROVINCE_CODES:
        raise IdentityError(f"证件号码「{number}」的前两位 {number[:2]} 不是有效的省级行政区划代码，请核对证件号码")

    _check_birth_date(number, today)
    expected = check_character(number[:17])
    if number[17] != expected:
        raise IdentityError(f"证件号码「{number}」校验位错误：按前 17 位计算应为 {expected}，请核对号码是否抄错")


def _check_gb11643_shape(number: str) -> None:
    if _FIRST_GENERATION_SHAPE.fullmatch(number):
        raise IdentityError(
            f"证件号码「{number}」是 15 位的第一代身份证号码，已停止使用；请填写持证人现行的 18 位号码"
        )
    if not _GB11643_SHAPE.fullmatch(number):
        raise IdentityError(
            f"证件号码「{number}」有 {len(number)} 位，应为 18 位（前 17 位为数字，最后一位为数字或 X）；请核对证件号码"
        )


def _check_birth_date(number: str, today: date) -> None:
    try:
        birth_date = resident_birth_date(number)
    except ValueError:
        birth_date = None
    if birth_date is None or not _EARLIEST_BIRTH_DATE <= birth_date <= today:
        raise IdentityError(
            f"证件号码「{number}」第 7 至 14 位的出生日期 {number[6:14]} 不是有效日期，请核对证件号码"
        )
