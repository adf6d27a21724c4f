"""Password rules for holders and staff.

app/data/common-passwords.txt.gz is the first 10,000 lines of
django/contrib/auth/common-passwords.txt.gz from Django 5.2.8 (BSD-3-Clause).
Royce Williams compiled that list from breach corpora, most frequent first.
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path

COMMON_PASSWORDS_FILE = Path(__file__).resolve().parent.parent / "data" / "common-passwords.txt.gz"
HOLDER_MIN_LENGTH = 8
STAFF_MIN_LENGTH = 12
MAX_LENGTH = 128
STAFF_MIN_CLASSES = 3


@cache
def common_passwords() -> frozenset[str]:
    with gzip.open(COMMON_PASSWORDS_FILE, "rt", encoding="utf-8") as stream:
        return frozenset(line.strip().lower() for line in stream if line.strip())


def is_common(password: str) -> bool:
    return password.lower() in common_passwords()


def holder_password_problem(password: str) -> str | None:
    """Return why a holder password is unacceptable (in Chinese), or None."""
    if len(password) < HOLDER_MIN_LENGTH:
        return f"密码至少 {HOLDER_MIN_LENGTH} 位，请设置更长的密码。"
    if len(password) > MAX_LENGTH:
        return f"密码最多 {MAX_LENGTH} 位。"
    if is_common(password):
        return "该密码过于常见，容易被猜中，请换一个不常见的密码。"
    return None


def staff_password_problem(password: str) -> str | None:
    """Return why a staff password is unacceptable (in Chinese), or None.

    Staff passwords also need three of four character classes, which the
    graded-protection (等保) assessment checks for administrator accounts.
    """
    if len(password) < STAFF_MIN_LENGTH:
        return f"工作人员密码至少 {STAFF_MIN_LENGTH} 位。"
    if len(password) > MAX_LENGTH:
        return f"密码最多 {MAX_LENGTH} 位。"
    classes = sum(
        [
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() for c in password),
        ]
    )
    if classes < STAFF_MIN_CLASSES:
        return "工作人员密码须包含大写字母、小写字母、数字和符号中的至少三类。"
    if is_common(password):
        return "该密码过于常见，容易被猜中，请换一个不常见的密码。"
    return None
