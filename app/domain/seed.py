"""The catalogue the first migration writes into the database.

This is the catalogue as of the first release. Later changes are made by
staff in the admin area or by new migrations, never by editing this data,
because the initial migration replays it on every fresh database.
`build_catalogue` turns it into a `Catalogue` for tests that need no database.
"""

from __future__ import annotations

from .catalogue import (
    CATEGORY_QUALIFICATION,
    CATEGORY_TITLE,
    Catalogue,
    DocumentKind,
    Exam,
    Layout,
    Seal,
)

BUREAU = "重庆市人力资源和社会保障局"
TITLE_OFFICE = "重庆市职称改革办公室"
EXAM_CENTRE = "重庆市人事考试中心"
HOUSING = "重庆市住房和城乡建设委员会"
TRANSPORT = "重庆市交通运输委员会"
WATER = "重庆市水利局"
EMERGENCY = "重庆市应急管理局"

# Seal codes are specimens: the bureau installs the official codes with the images.
SEALS = [
    {"code": "5000000000101", "name": "重庆市人力资源和社会保障局专业技术人员职业资格证书专用章"},
    {"code": "5000000000202", "name": "重庆市职称改革办公室考试证书专用章"},
    {"code": "5000000000303", "name": "重庆市人事考试中心"},
]

DOCUMENT_KINDS = [
    {"code": "qualification", "name": "职业资格电子证书", "issuer": BUREAU, "seal_code": "5000000000101"},
    {"code": "title", "name": "职称考试电子证书", "issuer": TITLE_OFFICE, "seal_code": "5000000000202"},
    {"code": "pass", "name": "合格证明", "issuer": EXAM_CENTRE, "seal_code": "5000000000303"},
]

QUALIFICATION_STATEMENT = (
    "本证书由{issuer}批准颁发，表明持证人通过国家统一组织的考试，"
    "取得{exam}职业资格。"
)
PASS_STATEMENT_ADDED_SPECIALTY = (
    "兹证明持证人参加{exam}职业资格考试{specialty}专业类别考试，成绩合格，"
    "可作为注册时增加执业专业的依据。"
)
PASS_STATEMENT_SAFETY = (
    "兹证明持证人参加{exam}职业资格考试{specialty}专业类别考试，成绩合格，"
    "可作为注册时变更专业类别等事项的依据。"
)
PASS_STATEMENT_TITLE = "兹证明持证人参加{exam}考试，成绩合格。"
TITLE_STATEMENT = "持证人参加{exam}考试，成绩合格，特发此证。"

LAYOUTS = [
    {"code": "qual_constructor", "name": "二级建造师职业资格证书", "title": "二级建造师职业资格证书",
     "kind": "qualification", "co_issuers": [HOUSING], "statement": QUALIFICATION_STATEMENT},
    {"code": "qual_cost_civil", "name": "二级造价工程师职业资格证书（土木建筑工程、安装工程）",
     "title": "二级造价工程师职业资格证书", "kind": "qualification", "co_issuers": [HOUSING],
     "statement": QUALIFICATION_STATEMENT},
    {"code": "qual_cost_transport", "name": "二级造价工程师职业资格证书（交通运输工程）",
     "title": "二级造价工程师职业资格证书", "kind": "qualification", "co_issuers": [TRANSPORT],
     "statement": QUALIFICATION_STATEMENT},
    {"code": "qual_cost_water", "name": "二级造价工程师职业资格证书（水利工程）",
     "title": "二级造价工程师职业资格证书", "kind": "qualification", "co_issuers": [WATER],
     "statement": QUALIFICATION_STATEMENT},
    {"code": "qual_safety", "name": "初级注册安全工程师职业资格证书", "title": "初级注册安全工程师职业资格证书",
     "kind": "qualification", "co_issuers": [EMERGENCY], "statement": QUALIFICATION_STATEMENT},
    {"code": "title_exam", "name": "职称考试证书", "title": "专业技术人员职称考试合格证书",
     "kind": "title", "co_issuers": [], "statement": TITLE_STATEMENT},
    {"code": "pass_constructor", "name": "二级建造师增报专业合格证明", "title": "考试合格证明",
     "kind": "pass", "co_issuers": [], "statement": PASS_STATEMENT_ADDED_SPECIALTY},
    {"code": "pass_cost", "name": "二级造价工程师增报专业合格证明", "title": "考试合格证明",
     "kind": "pass", "co_issuers": [], "statement": PASS_STATEMENT_ADDED_SPECIALTY},
    {"code": "pass_safety", "name": "初级注册安全工程师增报专业合格证明", "title": "考试合格证明",
     "kind": "pass", "co_issuers": [], "statement": PASS_STATEMENT_SAFETY},
    {"code": "pass_title", "name": "职称考试合格证明", "title": "考试合格证明",
     "kind": "pass", "co_issuers": [], "statement": PASS_STATEMENT_TITLE},
]

TITLE_LEVELS = ["初级", "中级", "高级"]

EXAMS = [
    {"name": "二级建造师", "category": CATEGORY_QUALIFICATION,
     "specialties": ["建筑工程", "市政公用工程", "机电工程", "公路工程", "水利水电工程", "矿业工程"],
     "certificate_layout": "qual_constructor", "pass_layout": "pass_constructor"},
    {"name": "二级造价工程师", "category": CATEGORY_QUALIFICATION,
     "specialties": ["土木建筑工程", "安装工程", "交通运输工程", "水利工程"],
     "certificate_layout": "qual_cost_civil", "pass_layout": "pass_cost",
     "specialty_layouts": {"交通运输工程": "qual_cost_transport", "水利工程": "qual_cost_water"}},
    {"name": "初级注册安全工程师", "category": CATEGORY_QUALIFICATION,
     "specialties": ["煤矿安全", "金属非金属矿山安全", "化工安全", "金属冶炼安全", "建筑施工安全",
                     "道路运输安全", "其他安全（不包括消防安全）"],
     "certificate_layout": "qual_safety", "pass_layout": "pass_safety"},
    {"name": "风景园林", "category": CATEGORY_TITLE, "specialties": ["风景园林"], "levels": TITLE_LEVELS,
     "certificate_layout": "title_exam", "pass_layout": "pass_title"},
    {"name": "农业技术人员", "category": CATEGORY_TITLE,
     "specialties": ["农学", "园艺", "植物保护", "畜牧", "兽医", "水产", "农业经济"], "levels": TITLE_LEVELS,
     "certificate_layout": "title_exam", "pass_layout": "pass_title"},
    {"name": "林业", "category": CATEGORY_TITLE, "specialties": ["林学", "森林保护", "园林", "林业经济"],
     "levels": TITLE_LEVELS, "certificate_layout": "title_exam", "pass_layout": "pass_title"},
    {"name": "标准化", "category": CATEGORY_TITLE, "specialties": ["标准化工程"], "levels": TITLE_LEVELS,
     "certificate_layout": "title_exam", "pass_layout": "pass_title"},
]


def build_catalogue() -> Catalogue:
    """Build the seed catalogue without a database."""
    seals = {s["code"]: Seal(code=s["code"], name=s["name"]) for s in SEALS}
    kinds = {
        k["code"]: DocumentKind(code=k["code"], name=k["name"], issuer=k["issuer"], seal=seals[k["seal_code"]])
        for k in DOCUMENT_KINDS
    }
    layouts = {
        item["code"]: Layout(
            code=item["code"],
            name=item["name"],
            title=item["title"],
            document_kind=kinds[item["kind"]],
            co_issuers=tuple(item["co_issuers"]),
            statement=item["statement"],
        )
        for item in LAYOUTS
    }
    exams = {
        item["name"]: Exam(
            name=item["name"],
            category=item["category"],
            specialties=tuple(item["specialties"]),
            levels=tuple(item.get("levels", ())),
            certificate_layout=item["certificate_layout"],
            pass_layout=item["pass_layout"],
            specialty_layouts=dict(item.get("specialty_layouts", {})),
        )
        for item in EXAMS
    }
    return Catalogue(exams=exams, layouts=layouts)
