"""The error every command raises to stop with a message, printed in Chinese."""

from __future__ import annotations

import click


class CommandError(click.ClickException):
    """Stop a command with exit status 1 and print `错误：<message>` to stderr.

    click's own ClickException prints the English prefix "Error: ".
    """

    def show(self, file=None) -> None:
        click.echo(f"错误：{self.format_message()}", file=file, err=file is None, color=self.show_color)
