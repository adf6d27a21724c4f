"""`flask --app wsgi keys ...`: the PDF signing keys and the rotation of the ID number keys.

`keys init` creates the demo CA and PDF signing certificate. `keys
rotate-id-key` re-encrypts every encrypted value (see app/id_numbers.py) with
the current ID_NUMBER_KEY; `keys rotate-hash-key` recomputes the lookup hashes
with the current ID_HASH_KEY. docs/security.md gives the order of steps.
"""

from __future__ import annotations

import logging

import click
import sqlalchemy as sa
from flask.cli import AppGroup

from . import id_numbers
from .cli_errors import CommandError
from .domain import crypto, signing
from .extensions import db
from .services.certificates import signing_keys

logger = logging.getLogger(__name__)

keys_cli = AppGroup("keys", help="管理证书 PDF 的签名密钥和证件号码的加密密钥。")


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
        raise CommandError(
            "配置的 SIGNING_KEY_FILE、SIGNING_CERT_FILE、SIGNING_CA_FILES 不是演示密钥的默认文件名，keys init 只生成演示密钥；"
            "正式部署请自行安装密钥和证书，不要运行本命令。"
        )
    try:
        created = signing.generate_demo_keys(directory, force=force)
    except signing.KeysExistError as error:
        raise CommandError(str(error)) from error
    click.echo(f"已生成演示 CA 和签名证书：{created.cert_file}（私钥 {created.key_file}，CA 证书 {created.ca_files[0]}）。")
    click.echo("这套密钥只用于演示；正式部署请安装本单位的签名证书，见 README 的 Signing keys 一节。")


# --- ID number keys -------------------------------------------------------------

ROTATE_CHUNK = 1000


@keys_cli.command("rotate-id-key")
@click.option("--check", is_flag=True, help="只统计各密钥加密的值的个数，不做改动。")
@click.option("--chunk", type=click.IntRange(1, 100_000), default=ROTATE_CHUNK, show_default=True,
              help="每次提交重新加密的行数；中断后再次运行会从未完成的行继续。")
def rotate_id_key(check: bool, chunk: int) -> None:
    """Re-encrypt every encrypted value with ID_NUMBER_KEY, reading old values with ID_NUMBER_OLD_KEYS."""
    ring = id_numbers.keyring()
    survey = id_key_survey(ring)
    _echo_survey(survey, ring)

    unknown = sorted({key for counts in survey.values() for key in counts if key not in ring.key_ids and key != "v1"})
    if unknown:
        raise CommandError(
            f"有值由密钥编号 {'、'.join(unknown)} 加密，但该密钥既不是当前的 ID_NUMBER_KEY（编号 {ring.current_id}），"
            "也不在 ID_NUMBER_OLD_KEYS 中：请把轮换前的 ID_NUMBER_KEY 加入 ID_NUMBER_OLD_KEYS 后重试。未做任何改动。"
        )

    pending = sum(count for counts in survey.values() for key, count in counts.items() if key != ring.current_id)
    if check:
        return
    if pending == 0:
        click.echo(f"所有加密值都已使用当前密钥（编号 {ring.current_id}），无需轮换；可以从 ID_NUMBER_OLD_KEYS 中删除旧密钥。")
        return

    total = 0
    for column in id_numbers.encrypted_columns(db.metadata):
        try:
            done = rotate_column(column, ring, chunk)
        except crypto.DecryptionError as error:
            raise CommandError(
                f"{column.table.name}.{column.name} 中有值无法用已配置的密钥解密（{error}）："
                "请核对 ID_NUMBER_OLD_KEYS 后重新运行。已提交的部分保持新密钥加密，重新运行会从剩下的值继续。"
            ) from error
        total += done
        if done:
            click.echo(f"{column.table.name}.{column.name}：已重新加密 {done} 个值。")

    logger.info("ID number key rotation: %s values re-encrypted with key id %s", total, ring.current_id)
    click.echo(
        f"完成：共重新加密 {total} 个值，现在所有加密值都使用密钥编号 {ring.current_id}。"
        "可以从 ID_NUMBER_OLD_KEYS 中删除旧密钥，并重启应用。"
    )


def id_key_survey(ring: crypto.KeyRing) -> dict[str, dict[str, int]]:
    """Count the stored ciphertexts of each encrypted column by key id ("v1" for the form without one)."""
    survey: dict[str, dict[str, int]] = {}
    for column in id_numbers.encrypted_columns(db.metadata):
        value = _raw(column)
        key = sa.case((value.like(f"{crypto.PREFIX}%"), sa.func.substr(value, 4, crypto.KEY_ID_LENGTH)), else_="v1")
        rows = db.session.execute(
            sa.select(key, sa.func.count()).where(value.is_not(None), value != "").group_by(key)
        ).all()
        survey[f"{column.table.name}.{column.name}"] = {str(name): count for name, count in rows}
    db.session.rollback()
    return survey


def rotate_column(column: sa.Column, ring: crypto.KeyRing, chunk: int) -> int:
    """Re-encrypt the column's values that are not under the current key, committing every `chunk` rows.

    Each update also matches the old ciphertext, so a value the running app
    changed in the meantime (already encrypted with the current key) is kept.
    """
    table = sa.table(column.table.name, sa.column("id", sa.Integer), sa.column(column.name, sa.Text))
    value = table.c[column.name]
    associated_data = column.type.associated_data
    statement = (
        table.update()
        .where(table.c.id == sa.bindparam("row_id"), value == sa.bindparam("old_value"))
        .values({column.name: sa.bindparam("new_value")})
    )
    done = 0
    last_id = 0
    while True:
        rows = db.session.execute(
            sa.select(table.c.id, value)
            .where(table.c.id > last_id, value.is_not(None), value != "",
                   value.not_like(f"{crypto.PREFIX}{ring.current_id}:%"))
            .order_by(table.c.id)
            .limit(chunk)
        ).all()  # fmt: skip
        if not rows:
            return done
        last_id = rows[-1][0]
        updates = []
        for row_id, old in rows:
            try:
                plaintext = ring.decrypt(old, associated_data)
            except crypto.DecryptionError as error:
                db.session.rollback()
                raise crypto.DecryptionError(f"row id {row_id}: {error}") from error
            updates.append({"row_id": row_id, "old_value": old, "new_value": ring.encrypt(plaintext, associated_data)})
        db.session.execute(statement, updates)
        db.session.commit()
        done += len(updates)


def _raw(column: sa.Column):
    """Return the column as plain text, so a query reads the ciphertext instead of decrypting it."""
    return sa.table(column.table.name, sa.column(column.name, sa.Text)).c[column.name]


def _echo_survey(survey: dict[str, dict[str, int]], ring: crypto.KeyRing) -> None:
    click.echo(f"当前 ID_NUMBER_KEY 的密钥编号：{ring.current_id}；ID_NUMBER_OLD_KEYS 中的编号：{'、'.join(ring.key_ids[1:]) or '无'}")
    for name, counts in survey.items():
        if counts:
            shown = "，".join(f"{key}：{count}" for key, count in sorted(counts.items()))
            click.echo(f"  {name}：{shown}")


@keys_cli.command("rotate-hash-key")
def rotate_hash_key() -> None:
    """Recompute every id_number_hash with ID_HASH_KEY from the decrypted ID numbers, in one transaction."""
    from .models import Certificate, Holder

    changed = 0
    for model in (Holder, Certificate):
        table = model.__table__
        statement = (
            table.update().where(table.c.id == sa.bindparam("row_id")).values(id_number_hash=sa.bindparam("new_hash"))
        )
        last_id = 0
        while True:
            rows = db.session.execute(
                sa.select(table.c.id, table.c.id_number, table.c.id_number_hash)
                .where(table.c.id > last_id).order_by(table.c.id).limit(ROTATE_CHUNK)
            ).all()  # fmt: skip
            if not rows:
                break
            last_id = rows[-1].id
            updates = [
                {"row_id": row.id, "new_hash": new_hash}
                for row in rows
                if (new_hash := id_numbers.id_hash(row.id_number)) != row.id_number_hash
            ]
            if updates:
                try:
                    db.session.execute(statement, updates)
                except sa.exc.IntegrityError as error:
                    db.session.rollback()
                    raise CommandError(
                        "holder 表中有两个账号的证件类型和证件号码相同（很可能是在更换 ID_HASH_KEY 之后、本命令完成之前注册的），"
                        "无法重新计算查询哈希。未做任何改动：请先停止应用，在数据库中核对并合并重复的账号后重新运行。"
                    ) from error
            changed += len(updates)
    db.session.commit()
    logger.info("ID hash key rotation: %s lookup hashes recomputed", changed)
    click.echo(f"完成：重新计算了 {changed} 个证件号码查询哈希（holder 与 certificate 表），现在按证件号码的查询使用新的 ID_HASH_KEY。")
