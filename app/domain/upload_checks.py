"""Checks on an uploaded file made before any reader parses it: its size, and a workbook's ZIP container.

`check_upload_size` applies the per-kind limit (ROSTER_UPLOAD_MAX_BYTES,
SEAL_UPLOAD_MAX_BYTES) to one file of a request; MAX_CONTENT_LENGTH still
bounds the whole request before Flask reads it.

The limits apply to the sizes declared in the central directory. Each member
is then inflated once, in chunks, by Python's zipfile, which stops at the
declared size and fails the CRC check if the data is longer. So a file that
passes cannot inflate past its declared sizes in the workbook readers either.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

from .roster_read import RosterFileError

MAX_ENTRIES = 1_000
MAX_TOTAL_UNCOMPRESSED = 512 * 1024 * 1024
# Worksheets compress 10-30 times; a ratio far above that is a ZIP bomb. Small
# members are exempt because tiny XML parts compress unpredictably.
MAX_RATIO = 250
RATIO_EXEMPT_BYTES = 1024 * 1024
MACRO_PARTS = ("xl/vbaproject.bin", "xl/vbaprojectsignature.bin")
CHUNK_BYTES = 1024 * 1024


class UploadTooLargeError(ValueError):
    """One uploaded file is larger than the limit for its kind; the message names the file and the limit."""


def check_upload_size(stream: BinaryIO, display_name: str, limit_bytes: int, label: str, advice: str) -> int:
    """Return the size of an uploaded file, or raise UploadTooLargeError when it exceeds `limit_bytes`.

    `label` names the kind of file in the message ("名单文件", "印章图片"), and
    `advice` is the next step for staff. The stream must be seekable and is left at its
    start, so the caller reads it as if it had not been checked.
    """
    # werkzeug spools every uploaded file to a seekable stream (BytesIO or a temporary file).
    size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    if size > limit_bytes:
        raise UploadTooLargeError(
            f"{label}「{display_name}」有 {format_size(size)}，超过{label}的上限 {format_size(limit_bytes)}；{advice}"
        )
    return size


def format_size(size: int) -> str:
    """Return a byte count as staff read it: "1.5 MB", "300 KB" or "20 字节"."""
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f}".removesuffix(".0") + " MB"
    if size >= 1024:
        return f"{size / 1024:.1f}".removesuffix(".0") + " KB"
    return f"{size} 字节"


def check_workbook_archive(path: Path, display_name: str) -> None:
    """Raise RosterFileError if the XLSX container is too large when unpacked, too dense, or carries macros."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
            _check_declared(entries, display_name)
            _inflate_all(archive, entries)
    # zlib.error: a damaged deflate stream. RuntimeError: an encrypted member.
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as error:
        raise RosterFileError(
            f"无法读取 Excel 文件「{display_name}」，文件可能已损坏或不是 .xlsx 工作簿（{type(error).__name__}）；"
            "请用 Excel 打开后重新另存为 .xlsx 再上传"
        ) from error


def _inflate_all(archive: zipfile.ZipFile, entries: list[zipfile.ZipInfo]) -> None:
    """Inflate every member and discard the data, so a member whose real size differs from its declared one fails here."""
    for entry in entries:
        with archive.open(entry) as member:
            while member.read(CHUNK_BYTES):
                pass


def _check_declared(entries: list[zipfile.ZipInfo], display_name: str) -> None:
    if len(entries) > MAX_ENTRIES:
        raise RosterFileError(
            f"文件「{display_name}」内部包含 {len(entries)} 个部件，超过上限 {MAX_ENTRIES}，不像正常的名单工作簿；"
            "请用 Excel 另存为新的 .xlsx 文件后再上传"
        )
    total = sum(entry.file_size for entry in entries)
    if total > MAX_TOTAL_UNCOMPRESSED:
        raise RosterFileError(
            f"文件「{display_name}」解压后共 {total // (1024 * 1024)} MB，超过上限 {MAX_TOTAL_UNCOMPRESSED // (1024 * 1024)} MB；"
            "请把名单拆成几个文件分别上传"
        )
    for entry in entries:
        if entry.file_size > RATIO_EXEMPT_BYTES and entry.file_size > MAX_RATIO * max(entry.compress_size, 1):
            raise RosterFileError(
                f"文件「{display_name}」中的部件 {entry.filename[:80]} 压缩比异常（解压后 {entry.file_size} 字节，"
                f"压缩后 {entry.compress_size} 字节），可能是压缩炸弹，已拒绝；请用 Excel 另存为新的 .xlsx 文件后再上传"
            )
        if entry.filename.lower() in MACRO_PARTS:
            raise RosterFileError(
                f"文件「{display_name}」含有宏（VBA 代码），系统不接受带宏的工作簿；"
                "请在 Excel 中另存为“Excel 工作簿（*.xlsx）”（不含宏）后再上传"
            )
