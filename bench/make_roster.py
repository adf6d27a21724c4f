"""Write a synthetic 二级建造师 roster of N rows as XLSX, every row valid.

Names are drawn from common characters, ID numbers are made-up 18-character
resident IDs with correct check digits (region 500101, a birth date between
1960 and 1999 and a sequence), and certificate numbers are unique. Some ID
numbers are drawn twice (314 in 100,000 rows with the default seed). Such a
row keeps the name of the first, as one person with two certificates, because
the import rejects an ID number under two names. No row describes a real person.

    .venv/bin/python bench/make_roster.py bench/out/roster-100k.xlsx --rows 100000
"""

from __future__ import annotations

import argparse
import random
import sys
from datetime import date, timedelta
from pathlib import Path

from openpyxl import Workbook

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.domain.identity import check_character  # noqa: E402

HEADER = ["序号", "姓名", "性别", "证件号码", "出生年月", "专业名称", "批准日期", "证书编号"]
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超霞平刚桂兰玉华红梅飞鹏辉建国志文斌宇浩凯俊峰琳雪婷晶欣怡佳睿博子轩涵宁诗"
SPECIALTIES = ["建筑工程", "市政公用工程", "机电工程", "公路工程", "水利水电工程", "矿业工程"]


def synthetic_id(rng: random.Random, sequence: int) -> tuple[str, str, date]:
    """Return (ID number, gender, birth date) for a made-up resident ID."""
    born = date(1960, 1, 1) + timedelta(days=rng.randrange(40 * 365))
    order = sequence % 1000
    first17 = f"500101{born:%Y%m%d}{order:03d}"
    gender = "男" if order % 2 else "女"
    return first17 + check_character(first17), gender, born


def write_roster(path: Path, rows: int, seed: int = 2024) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("合格人员")
    sheet.append(HEADER)
    names: dict[str, str] = {}
    for index in range(1, rows + 1):
        id_number, gender, born = synthetic_id(rng, index)
        name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
        name = names.setdefault(id_number, name)
        sheet.append([
            index, name, gender, id_number, f"{born:%Y-%m}", rng.choice(SPECIALTIES),
            date(2023, 1, 1) + timedelta(days=rng.randrange(700)), f"B2024{index:08d}",
        ])  # fmt: skip
    workbook.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic 二级建造师 roster (XLSX).")
    parser.add_argument("out", type=Path, help="XLSX file to write")
    parser.add_argument("--rows", type=int, default=100_000, help="number of data rows (default 100000)")
    parser.add_argument("--seed", type=int, default=2024, help="random seed, so runs are repeatable")
    arguments = parser.parse_args()
    write_roster(arguments.out, arguments.rows, arguments.seed)
    print(f"wrote {arguments.rows} rows to {arguments.out}")


if __name__ == "__main__":
    main()
