"""`flask --app wsgi keys init`: create the demo CA and PDF signing certificate."""

from __future__ import annotations

import click
from flask.cli import AppGroup

from .domain import signing
from .services.certificates import signing_keys

keys_cli = AppGroup("keys", help="管理证书 PDF 的签名密钥。")


@keys_cli.command("init")
@click.option("--force", is_flag=True, help="覆盖已有的密钥。旧密钥签名的 PDF 将无法再通过本站查验。")
@click.option("--if-missing", is_flag=True, help="密钥已存在时什么也不做，并以 0 退出（供 make run 使用）。")
def init_keys(force: bool, if_missing: bool) -> None:
    """Create a local demo CA and a signing certificate under instance/keys/."""
    keys = signing_keys()
    if if_missing and keys.exist() and not force:
        click.echo(f"签名密钥已存在：{keys.key_file}，未做改动。")
        return
    directory = keys.key_file.parent
    demo_layout = (keys.key_file.name == signing.KEY_FILE and keys.cert_file == directory / signing.CERT_FILE
                   and keys.ca_files == (directory / signing.CA_FILE,))
    if not demo_layout:
        raise click.ClickException(
            "配置的 SIGNING_KEY_FILE、SIGNING_CERT_FILE、SIGNING_CA_FILES 不是演示密钥的默认文件名，keys init 只生成演示密钥；"
            "正式部署请自行安装密钥和证书，不要运行本命令。"
        )
    try:
        created = signing.generate_demo_keys(directory, force=force)
    except signing.KeysExistError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"已生成演示 CA 和签名证书：{created.cert_file}（私钥 {created.key_file}，CA 证书 {created.ca_files[0]}）。")
    click.echo("这套密钥只用于演示；正式部署请安装本单位的签名证书，见 README 的 Signing keys 一节。")
