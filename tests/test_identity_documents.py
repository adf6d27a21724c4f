"""Identity rules beyond the basic table: residence permits, loose shapes, type notes, real roster numbers."""

from __future__ import annotations

import csv
from datetime import date

import pytest

from app.domain.identity import (
    ID_FOREIGN_PERMANENT,
    ID_HK_MACAO_PERMIT,
    ID_PASSPORT,
    ID_RESIDENCE_PERMIT,
    ID_RESIDENT,
    ID_TAIWAN_PERMIT,
    IdentityError,
    check_character,
    clean_id_number,
    infer_id_type,
    normalise_id_number,
    normalise_id_type,
    resident_birth_month,
    resident_gender,
    uses_resident_scheme,
)

from .conftest import ROSTER_DIR

TODAY = date(2026, 12, 4)
COST_ROSTER = ROSTER_DIR / "2023年度二级造价工程师考试合格人员.csv"


def with_check(first17: str) -> str:
    return first17 + check_character(first17)


def wrong_check(first17: str) -> str:
    correct = check_character(first17)
    return first17 + ("0" if correct != "0" else "1")


@pytest.mark.parametrize(
    ("number", "reason_part"),
    [
        (wrong_check("81000019900101123"), "校验位错误"),
        (with_check("82000019901301123"), "出生日期"),
        (with_check("83000020270101123"), "出生日期"),
        ("8100001990010112", "应为 18 位"),
    ],
)
def test_residence_permit_rejected(number: str, reason_part: str) -> None:
    with pytest.raises(IdentityError) as caught:
        normalise_id_number(number, ID_RESIDENCE_PERMIT, today=TODAY)
    assert reason_part in caught.value.reason
    assert number in caught.value.reason


@pytest.mark.parametrize(
    ("number", "id_type"),
    [
        ("1234567890", ID_TAIWAN_PERMIT),
        ("M01234567", ID_HK_MACAO_PERMIT),
        ("G1234567", ID_PASSPORT),
        ("A1234567890123456", ID_PASSPORT),
        ("CAN123456789012", ID_FOREIGN_PERMANENT),
        ("91115619900101123X", ID_FOREIGN_PERMANENT),
    ],
)
def test_loose_shapes_accepted(number: str, id_type: str) -> None:
    assert normalise_id_number(number, id_type, today=TODAY) == number


@pytest.mark.parametrize(
    ("number", "id_type"),
    [
        ("张三", ID_PASSPORT),
        ("1990-01-01", ID_TAIWAN_PERMIT),
        ("123456789", ID_TAIWAN_PERMIT),
        ("H012345678", ID_HK_MACAO_PERMIT),
        ("US123456789012", ID_FOREIGN_PERMANENT),
        ("81115619900101123X", ID_FOREIGN_PERMANENT),
    ],
)
def test_loose_shapes_rejected(number: str, id_type: str) -> None:
    with pytest.raises(IdentityError) as caught:
        normalise_id_number(number, id_type, today=TODAY)
    assert id_type in caught.value.reason


def test_error_text_is_reason() -> None:
    with pytest.raises(IdentityError) as caught:
        normalise_id_number("E1", ID_PASSPORT, today=TODAY)
    assert str(caught.value) == caught.value.reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("'500103199001011232", "500103199001011232"),
        ("50011219920730183x", "50011219920730183X"),
        ("5001\u200b0319\ufeff9001011232", "500103199001011232"),
        ("５００１０３\u00a0１９９００１０１１２３２", "500103199001011232"),
        ("E'12", "E'12"),
        ("", ""),
    ],
)
def test_clean_id_number(raw: str, expected: str) -> None:
    assert clean_id_number(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("台湾居民来往大陆通行证（台胞证）", ID_TAIWAN_PERMIT),
        ("外国人永久居留身份证(五星卡)", ID_FOREIGN_PERMANENT),
        ("ＰＡＳＳＰＯＲＴ", ID_PASSPORT),
        ("中华人民共和国居民身份证", ID_RESIDENT),
        ("\t港澳台居民居住证\n", ID_RESIDENCE_PERMIT),
    ],
)
def test_id_type_notes_and_width(raw: str, expected: str) -> None:
    assert normalise_id_type(raw) == expected


@pytest.mark.parametrize("raw", ["军官证（现役）", "身份", "(护照)"])
def test_id_type_unknown_rejected(raw: str) -> None:
    with pytest.raises(IdentityError) as caught:
        normalise_id_type(raw)
    assert raw.strip() in caught.value.reason


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("８１００００１９９００１０１１２３４", ID_RESIDENCE_PERMIT),
        ("81000019900101123", ID_RESIDENT),
        ("E12345678", ID_RESIDENT),
    ],
)
def test_infer_id_type_by_number(number: str, expected: str) -> None:
    assert infer_id_type(None, number) == expected


@pytest.mark.parametrize(
    ("id_type", "expected"),
    [
        (ID_RESIDENT, True),
        (ID_RESIDENCE_PERMIT, True),
        (ID_PASSPORT, False),
        (ID_HK_MACAO_PERMIT, False),
        (ID_TAIWAN_PERMIT, False),
        (ID_FOREIGN_PERMANENT, False),
    ],
)
def test_uses_resident_scheme(id_type: str, expected: bool) -> None:
    assert uses_resident_scheme(id_type) is expected


def test_residence_permit_facts() -> None:
    number = with_check("83000019950617002")
    assert normalise_id_number(number, ID_RESIDENCE_PERMIT, today=TODAY) == number
    assert resident_gender(number) == "女"
    assert resident_birth_month(number) == date(1995, 6, 1)


def roster_rows() -> list[dict[str, str]]:
    with COST_ROSTER.open(encoding="gb18030", newline="") as stream:
        return list(csv.DictReader(stream))


def test_sample_roster_numbers_valid() -> None:
    rows = roster_rows()
    assert len(rows) == 800
    invalid = []
    for row in rows:
        try:
            normalise_id_number(row["身份证号"], ID_RESIDENT, today=TODAY)
        except IdentityError as error:
            invalid.append(error.reason)
    assert invalid == []


def test_sample_roster_facts_agree() -> None:
    disagreeing = [
        row["序号"]
        for row in roster_rows()
        if resident_gender(row["身份证号"]) != row["性别"]
        or f"{resident_birth_month(row['身份证号']):%Y.%m}" != row["出生年月"]
    ]
    assert disagreeing == []
