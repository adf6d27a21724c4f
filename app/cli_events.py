"""`flask --app wsgi events purge`: delete lookup and download events past their retention."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from .services import events

events_cli = AppGroup("events", help="管理查验和下载记录。")


@events_cli.command("purge")
@click.option(
    "--days",
    type=click.IntRange(min=1),
    help="保留最近多少天的记录；默认取配置项 LOOKUP_LOG_RETENTION_DAYS（180 天）。",
)
def purge(days: int | None) -> None:
    """Delete lookup and download events older than the retention period."""
    days = days or int(current_app.config["LOOKUP_LOG_RETENTION_DAYS"])
    lookups, downloads = events.purge(days=days)
    click.echo(f"已删除 {days} 天以前的查验记录 {lookups} 条、下载记录 {downloads} 条。")
