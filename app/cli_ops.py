"""Operations commands: `flask --app wsgi backup` and `flask --app wsgi restore`."""

from __future__ import annotations

from pathlib import Path

import click
from flask import Flask
from flask.cli import with_appcontext

from .cli_errors import CommandError
from .services import backup as backup_service


@click.command("backup")
@with_appcontext
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="备份文件的保存目录，默认为 instance/backups。",
)
def backup_command(out_dir: Path | None) -> None:
    """Take an online backup of the database (SQLite backup API or pg_dump)."""
    try:
        path = backup_service.backup(out_dir)
    except backup_service.BackupError as error:
        raise CommandError(str(error)) from error
    click.echo(f"已备份到 {path}（{path.stat().st_size} 字节）。")


@click.command("restore")
@with_appcontext
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="目标数据库中已有数据时仍然用备份覆盖它。")
def restore_command(file: Path, force: bool) -> None:
    """Replace the database with a backup written by `backup`, warning when its schema is not the code's.

    The restore leaves the schema as the backup has it and still exits with
    status 0, because the data are restored exactly. Migrating is left to
    `db upgrade`, which the operator runs after checking the restored copy.
    """
    try:
        digests = backup_service.restore(file, force=force)
    except backup_service.BackupError as error:
        raise CommandError(str(error)) from error
    click.echo(f"已从 {file} 恢复数据库。各表行数：")
    for table, digest in digests.items():
        click.echo(f"  {table}: {digest.rows}")
    warning = backup_service.schema_warning()
    if warning:
        click.echo(f"警告：{warning}", err=True)


def register(app: Flask) -> None:
    app.cli.add_command(backup_command)
    app.cli.add_command(restore_command)
