"""Identity rules: check characters, normalisation, derived facts, other documents, masking."""

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
    infer_id_type,
    mask_id_number,
    normalise_id_number,
    normalise_id_type,
    resident_birth_date,
    resident_birth_month,
    resident_gender,
)

TODAY = date(2026, 12, 4)


def with_check(first17: str) -> str:
    return first17 + check_character(first17)


# 11010519491231002X is the example printed in GB 11643; the others come from the sample rosters.
@pytest.mark.parametrize(
    ("first17", "expected"),
    [
        ("11010519491231002", "X"),
        ("50010319900101123", "2"),
        ("50011219920730183", "X"),
        ("65010219900808184", "6"),
        ("37010219990503513", "X"),
        ("50010719790815023", "7"),
        ("00000000000000000", "1"),
    ],
)
def test_check_character_known_numbers(first17: str, expected: str) -> None:
    assert check_character(first17) == expected


# The weights as GB 11643 prints them, written out instead of computed as powers of two.
PRINTED_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


@pytest.mark.parametrize("first17", ["11010519491231002", "50010819851202333", "99999999999999999", "12345678901234567"])
def test_check_character_matches_printed_weights(first17: str) -> None:
    total = sum(int(digit) * weight for digit, weight in zip(first17, PRINTED_WEIGHTS))
    assert check_character(first17) == "10X98765432"[total % 11]


@pytest.mark.parametrize("bad", ["", "1234567890123456", "123456789012345678", "5001031990010112X", "５００１０３１９９０１０１１２３"])
def test_check_character_rejects_non_digits(bad: str) -> None:
    with pytest.raises(ValueError):
        check_character(bad)


@pytest.mark.parametrize(
    ("raw", "id_type", "expected"),
    [
        ("500103199001011232", ID_RESIDENT, "500103199001011232"),
        ("50011219920730183x", ID_RESIDENT, "50011219920730183X"),
        ("５００１０８１９８５１２０２３３３９", ID_RESIDENT, "500108198512023339"),
        (" 500105 1991 0505 4141\t", ID_RESIDENT, "500105199105054141"),
        ("500105\u3000199105054141", ID_RESIDENT, "500105199105054141"),
        ("'500103199001011232", ID_RESIDENT, "500103199001011232"),
        ("\u200b500103199001011232", ID_RESIDENT, "500103199001011232"),
        (with_check("81000019900101123"), ID_RESIDENCE_PERMIT, with_check("81000019900101123")),
        (with_check("83000020000229002"), ID_RESIDENCE_PERMIT, with_check("83000020000229002")),
        ("h01234567", ID_HK_MACAO_PERMIT, "H01234567"),
        ("M0123456789", ID_HK_MACAO_PERMIT, "M0123456789"),
        ("１２３４５６７８", ID_TAIWAN_PERMIT, "12345678"),
        ("e 1234 5678", ID_PASSPORT, "E12345678"),
        ("AB123", ID_PASSPORT, "AB123"),
        ("usa123456789012", ID_FOREIGN_PERMANENT, "USA123456789012"),
        ("911156199001011234", ID_FOREIGN_PERMANENT, "911156199001011234"),
    ],
)
def test_normalise_id_number_accepts(raw: str, id_type: str, expected: str) -> None:
    assert normalise_id_number(raw, id_type, today=TODAY) == expected


@pytest.mark.parametrize(
    ("raw", "id_type", "reason_part"),
    [
        ("500107197908150231", ID_RESIDENT, "校验位错误"),
        ("50010319900101123", ID_RESIDENT, "应为 18 位"),
        ("5001031990010112345", ID_RESIDENT, "应为 18 位"),
        ("500103900101123", ID_RESIDENT, "15 位"),
        ("50010319900101123Y", ID_RESIDENT, "应为 18 位"),
        (with_check("99010319900101123"), ID_RESIDENT, "省级行政区划代码"),
        (with_check("00010319900101123"), ID_RESIDENT, "省级行政区划代码"),
        (with_check("50010319900230123"), ID_RESIDENT, "出生日期"),
        (with_check("50010320300101123"), ID_RESIDENT, "出生日期"),
        (with_check("50010318991231123"), ID_RESIDENT, "出生日期"),
        (with_check("81000019900101123"), ID_RESIDENT, ID_RESIDENCE_PERMIT),
        (with_check("50010319900101123"), ID_RESIDENCE_PERMIT, "810000"),
        ("", ID_RESIDENT, "为空"),
        ("  ", ID_PASSPORT, "为空"),
        ("A0123456", ID_HK_MACAO_PERMIT, "H 或 M"),
        ("H0123456", ID_HK_MACAO_PERMIT, "H 或 M"),
        ("1234567", ID_TAIWAN_PERMIT, "8 位"),
        ("T1234567", ID_TAIWAN_PERMIT, "8 位"),
        ("E123", ID_PASSPORT, "5 至 17"),
        ("E1234-5678", ID_PASSPORT, "5 至 17"),
        ("E12345678901234567", ID_PASSPORT, "5 至 17"),
        ("USA12345678901", ID_FOREIGN_PERMANENT, "15 位或 18 位"),
        ("500103199001011232", "军官证", "证件类型"),
    ],
)
def test_normalise_id_number_rejects(raw: str, id_type: str, reason_part: str) -> None:
    with pytest.raises(IdentityError) as caught:
        normalise_id_number(raw, id_type, today=TODAY)
    assert reason_part in caught.value.reason


def test_id_error_reason_names_value() -> None:
    with pytest.raises(IdentityError) as caught:
        normalise_id_number("500107197908150231", ID_RESIDENT, today=TODAY)
    assert "500107197908150231" in str(caught.value)


def test_birth_date_today_accepted() -> None:
    number = with_check("50010320261204123")
    assert normalise_id_number(number, today=TODAY) == number


@pytest.mark.parametrize(
    ("number", "gender", "birth_month", "birth_date"),
    [
        ("500103199001011232", "男", date(1990, 1, 1), date(1990, 1, 1)),
        ("500105199105054141", "女", date(1991, 5, 1), date(1991, 5, 5)),
        ("50011219920730183X", "男", date(1992, 7, 1), date(1992, 7, 30)),
        ("650102199008081846", "女", date(1990, 8, 1), date(1990, 8, 8)),
        ("500109198304200739", "男", date(1983, 4, 1), date(1983, 4, 20)),
    ],
)
def test_resident_facts(number: str, gender: str, birth_month: date, birth_date: date) -> None:
    assert resident_gender(number) == gender
    assert resident_birth_month(number) == birth_month
    assert resident_birth_date(number) == birth_date


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, ID_RESIDENT),
        ("", ID_RESIDENT),
        ("  ", ID_RESIDENT),
        ("居民身份证", ID_RESIDENT),
        ("身份证", ID_RESIDENT),
        ("护 照", ID_PASSPORT),
        ("passport", ID_PASSPORT),
        ("港澳居民来往内地通行证", ID_HK_MACAO_PERMIT),
        ("港澳居民来往内地通行证（回乡证）", ID_HK_MACAO_PERMIT),
        ("台胞证", ID_TAIWAN_PERMIT),
        ("外国人永久居留身份证", ID_FOREIGN_PERMANENT),
        ("港澳台居民居住证", ID_RESIDENCE_PERMIT),
    ],
)
def test_normalise_id_type(raw: str | None, expected: str) -> None:
    assert normalise_id_type(raw) == expected


def test_normalise_id_type_rejects_unknown() -> None:
    with pytest.raises(IdentityError) as caught:
        normalise_id_type("军官证")
    assert "军官证" in caught.value.reason


@pytest.mark.parametrize(
    ("raw_type", "number", "expected"),
    [
        (None, "500103199001011232", ID_RESIDENT),
        ("", "810000199001011234", ID_RESIDENCE_PERMIT),
        (None, " 820000199001011234", ID_RESIDENCE_PERMIT),
        ("居民身份证", "810000199001011234", ID_RESIDENT),
        ("护照", "E12345678", ID_PASSPORT),
    ],
)
def test_infer_id_type(raw_type: str | None, number: str, expected: str) -> None:
    assert infer_id_type(raw_type, number) == expected


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("500103199001011234", "5001**********1234"),
        ("50011219920730183X", "5001**********183X"),
        ("USA123456789012", "USA*********012"),
        ("E12345678", "E1*****78"),
        ("H01234567", "H0*****67"),
        ("12345678", "12****78"),
        ("AB123", "A***3"),
        ("ABC", "***"),
        ("", ""),
        (" 5001 0319 9001 0112 34 ", "5001**********1234"),
    ],
)
def test_mask_id_number(number: str, masked: str) -> None:
    assert mask_id_number(number) == masked


@pytest.mark.parametrize("number", ["500103199001011234", "E12345678", "USA123456789012", "AB123", "12345678901234567890"])
def test_mask_hides_at_least_half(number: str) -> None:
    masked = mask_id_number(number)
    assert masked.count("*") * 2 >= len(number)
