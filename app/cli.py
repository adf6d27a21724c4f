"""Command-line interface: `flask --app wsgi staff|roster|certificate|demo ...`."""

from __future__ import annotations

import secrets
import string
from pathlib import Path

import click
from flask import Flask
from flask.cli import AppGroup
from sqlalchemy import select

from . import PROJECT_ROOT
from .cli_errors import CommandError
from .domain.catalogue import KIND_CERTIFICATE, KIND_PASS, Catalogue
from .domain.documents import MissingGlyphError
from .domain.roster import RosterFileError, guess_from_filename
from .domain.roster_read import EXAM, KIND, open_roster
from .extensions import db
from .models import Certificate, ImportBatch, StaffUser
from .services import accounts, batches
from .services.catalogue import load_catalogue
from .services.certificates import certificate_pdf
from .services.lookup import normalise_number
from .services.issuing import IMPORTED, REJECTED, SKIPPED, file_sha256

staff_cli = AppGroup("staff", help="管理工作人员账号。")
roster_cli = AppGroup("roster", help="导入考试合格人员名单。")
certificate_cli = AppGroup("certificate", help="生成证书文件。")

KIND_CHOICES = {"证书": KIND_CERTIFICATE, "合格证明": KIND_PASS, KIND_CERTIFICATE: KIND_CERTIFICATE, KIND_PASS: KIND_PASS}

# The clean sample rosters the demo loads, with the exam and kind for files that lack those columns.
DEMO_ROSTERS = [
    ("历年二级建造师证书信息2016-2023.xlsx", "二级建造师", KIND_CERTIFICATE),
    ("2024年度二级建造师考试合格人员名单.xlsx", "二级建造师", KIND_CERTIFICATE),
    ("2023年度二级造价工程师考试合格人员.csv", "二级造价工程师", KIND_CERTIFICATE),
    ("2024年度初级注册安全工程师考试合格人员.xlsx", "初级注册安全工程师", KIND_CERTIFICATE),
    ("2024年度职称考试合格人员.xlsx", None, None),
    ("2024年度增报专业考试合格证明名单.xlsx", None, KIND_PASS),
]
DEMO_ROSTER_DIR = PROJECT_ROOT / "tests" / "data" / "rosters"


def generate_password() -> str:
    """Return a random 16-character password with upper, lower, digit and symbol."""
    alphabet = string.ascii_letters + string.digits + "!#%+-=?@"
    while True:
        password = "".join(secrets.choice(alphabet) for _ in range(16))
        if (
            any(c.islower() for c in password)
            and any(c.isupper() for c in password)
            and any(c.isdigit() for c in password)
            and any(not c.isalnum() for c in password)
        ):
            return password


@staff_cli.command("create")
@click.argument("username")
@click.option("--role", type=click.Choice(["admin", "operator", "auditor"]), required=True, help="账号角色。")
@click.option("--generate-password", "generate", is_flag=True, help="生成随机密码并只显示这一次，不再询问。")
def create_staff(username: str, role: str, generate: bool) -> None:
    """Create a staff account; the password is prompted for, or generated and printed once."""
    if db.session.scalar(select(StaffUser.id).where(StaffUser.username == username)):
        raise CommandError(f"用户名「{username}」已存在，请换一个用户名。")

    password = generate_password() if generate else click.prompt("密码", hide_input=True, confirmation_prompt="确认密码")
    problem = accounts.staff_password_problem(password)
    if problem:
        raise CommandError(problem)

    accounts.create_staff(username, role, password, actor="cli")
    click.echo(f"已创建工作人员账号 {username}（角色 {role}）。")
    if generate:
        click.echo(f"初始密码（只显示这一次）：{password}")


def _existing_file(ctx: click.Context, _param: click.Parameter, value: Path) -> Path:
    """Stop with status 2 and a Chinese message when FILE is missing; click's own message is English."""
    if not value.is_file():
        click.echo(f"错误：文件「{value}」不存在或不是文件，请核对路径。", err=True)
        ctx.exit(2)
    return value


def _kind_choice(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Stop with status 2 and a Chinese message when --kind is not one of KIND_CHOICES."""
    if value is not None and value not in KIND_CHOICES:
        click.echo(f"错误：证书类别「{value}」无效，应为 证书 或 合格证明。", err=True)
        ctx.exit(2)
    return value


@roster_cli.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), callback=_existing_file)
@click.option("--exam", help="考试项目，文件中没有考试项目列、文件名中也没有考试名称时必须指定，例如 二级建造师。")
@click.option(
    "--kind", callback=_kind_choice,
    help="证书类别：证书 或 合格证明。文件中没有证书类别列、文件名中也没有“证书”或“合格证明”时必须指定。",
)
@click.option("--dry-run", is_flag=True, help="只检查并输出结果，不写入证书库。")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), help="逐行结果报告（CSV）的保存路径。")
@click.option("--apply-changes", is_flag=True, help="更正证书编号相同、同一人但内容不同的已有记录；不加时这些行按拒绝报告并列出差异。")
@click.option("--include-hidden", is_flag=True, help="同时导入 Excel 中隐藏或被筛选隐藏的行；不加时这些行跳过。")
def import_roster(
    file: Path, exam: str | None, kind: str | None, dry_run: bool, report: Path | None, apply_changes: bool,
    include_hidden: bool,
) -> None:
    """Import an exam-result roster (XLSX or CSV)."""
    if report:
        _check_output_path(report)
    catalogue = load_catalogue()
    guessed_exam, guessed_kind = guess_from_filename(file.name, catalogue)
    chosen_exam = exam or guessed_exam
    chosen_kind = KIND_CHOICES.get(kind) if kind else guessed_kind
    progress = _stderr_progress(file)
    try:
        plan, batch = batches.import_file(
            file, exam=chosen_exam, kind=chosen_kind, actor="cli",
            dry_run=dry_run, apply_changes=apply_changes, include_hidden=include_hidden, progress=progress,
        )
    except RosterFileError as error:
        missing = None
        if chosen_exam is None or chosen_kind is None:
            missing = _missing_choice(file, chosen_exam, chosen_kind, catalogue)
        raise CommandError(missing or error.reason) from error

    if report:
        body = plan.report if batch is None else batches.batch_report_csv(batch)
        report.write_text(body, encoding="utf-8")
    for notice in plan.notices:
        click.echo(f"注意：{notice}", err=True)
    _echo_counts(plan, batch, dry_run)


def _missing_choice(file: Path, exam: str | None, kind: str | None, catalogue: Catalogue) -> str | None:
    """Return the options to add when the import failed for lack of an exam or kind, else None.

    Called only after a failed import, so a large file is not opened twice on
    success. The kind is never derived from the exam, because each qualification
    exam issues both certificates and pass certificates (合格证明, for added
    specialties), and so do the title exams.
    """
    if file.suffix.lower() not in batches.ALLOWED_SUFFIXES:
        return None
    try:
        with open_roster(file) as table:
            columns = table.header.columns
    except RosterFileError:
        return None  # the file itself is unusable, and the import's own message gives the reason
    problems = []
    if exam is None and EXAM not in columns:
        problems.append(
            "没有「考试项目」列，文件名中也没有考试名称：请加 --exam 指定考试项目，例如 --exam 二级建造师"
            f"（可选：{'、'.join(catalogue.exams)}）"
        )
    if kind is None and KIND not in columns:
        problems.append(
            "没有「证书类别」列，文件名中也没有“证书”或“合格证明”：请加 --kind 证书（职业资格证书、职称考试证书）"
            "或 --kind 合格证明（增报专业、职称考试的合格证明）；同一考试两种都会签发，无法从考试项目推断"
        )
    if not problems:
        return None
    return f"文件「{file.name}」" + "；".join(problems) + "。"


# Files above this size get a progress line on stderr (about 10,000 XLSX rows).
PROGRESS_BYTES = 1 << 20


def _stderr_progress(file: Path):
    """Return a progress callback that rewrites one stderr line, or None for a small file."""
    if file.stat().st_size < PROGRESS_BYTES:
        return None
    state = {"shown": -1}

    def show(done: int, total: int | None = None, message: str | None = None) -> None:
        step = done // 5000
        if step == state["shown"] and message is None:
            return
        state["shown"] = step
        label = message or "处理中"
        click.echo(f"\r{label}：{done}" + (f" / {total} 行" if total else " 行"), err=True, nl=message is not None)

    return show


def _echo_counts(plan, batch, dry_run: bool) -> None:
    counts = plan.counts
    if plan.earlier_batch_id:
        click.echo(f"该文件已于批次 #{plan.earlier_batch_id} 导入过，本次不会新增重复记录。")
    prefix = "检查完成（未写入）" if dry_run else f"导入完成，批次 #{batch.id}"
    changed = counts.get("changed", 0)
    corrected = f"，更正已有记录 {changed} 行" if changed else ""
    click.echo(
        f"{prefix}：导入 {counts[IMPORTED]} 行{corrected}，拒绝 {counts[REJECTED]} 行，跳过 {counts[SKIPPED]} 行。"
        f"\nimported={counts[IMPORTED]} rejected={counts[REJECTED]} skipped={counts[SKIPPED]} changed={changed}"
    )


@certificate_cli.command("render")
@click.argument("number")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="PDF 文件的保存路径。")
def render_certificate(number: str, out: Path) -> None:
    """Write one certificate's PDF."""
    _check_output_path(out)
    certificate = db.session.scalar(select(Certificate).where(Certificate.number == normalise_number(number)))
    if certificate is None:
        raise CommandError(f"证书编号「{number}」不存在。")
    try:
        pdf = certificate_pdf(certificate)
    except MissingGlyphError as error:
        raise CommandError(f"{error}。请先更正姓名或安装覆盖该字符的字体。") from error
    out.write_bytes(pdf)
    click.echo(f"已生成 {out}")


def _check_output_path(path: Path) -> None:
    """Reject an output path whose folder is missing, before any work is done."""
    if not path.parent.is_dir():
        raise CommandError(f"输出目录「{path.parent}」不存在，请先创建该目录或换一个路径。")


@click.command("demo")
@click.option("--username", default="demo-admin", show_default=True, help="演示管理员账号的用户名。")
def demo(username: str) -> None:
    """Load the sample rosters and print a staff account (a demo; safe to run again)."""
    for filename, exam, kind in DEMO_ROSTERS:
        path = DEMO_ROSTER_DIR / filename
        if _already_imported(path):
            click.echo(f"{filename}：已导入过，跳过")
            continue
        plan, batch = batches.import_file(path, exam=exam, kind=kind, actor="demo")
        counts = plan.counts
        click.echo(f"{filename}：导入 {counts[IMPORTED]}，拒绝 {counts[REJECTED]}，跳过 {counts[SKIPPED]}")

    password = generate_password()
    accounts.create_or_reset_staff(username, "admin", password, actor="demo")
    total = db.session.scalar(select(db.func.count(Certificate.id)))
    click.echo(f"证书库共 {total} 条记录。")
    click.echo(f"工作人员账号：{username}  密码：{password}  （登录地址 /admin）")


def _already_imported(path: Path) -> bool:
    digest = file_sha256(path)
    return db.session.scalar(
        select(ImportBatch.id).where(ImportBatch.sha256 == digest, ImportBatch.state == "confirmed").limit(1)
    ) is not None


def register(app: Flask) -> None:
    app.cli.add_command(staff_cli)
    app.cli.add_command(roster_cli)
    app.cli.add_command(certificate_cli)
    app.cli.add_command(demo)

    from . import cli_ops

    cli_ops.register(app)

    from .cli_events import events_cli

    app.cli.add_command(events_cli)

    from .cli_keys import keys_cli

    app.cli.add_command(keys_cli)

