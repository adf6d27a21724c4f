"""Keys, key rotation, log hygiene and what rendering may touch."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import socket
import sys
import threading

import pytest
from sqlalchemy import select

from app import ConfigurationError, create_app
from app.domain.tokens import make_token
from app.extensions import db
from app.models import Certificate
from app.security import sanitise
from app.services import accounts

from .conftest import HOLDER_PASSWORD, csrf_token

STRONG = "k" * 48
ROSTER = "2024年度二级建造师考试合格人员名单.xlsx"
NUMBER = "202421000001"
ID_NUMBER = "500109196409269696"
NAME = "田娟"


def production_config(**overrides):
    config = {
        "SECRET_KEY": STRONG,
        "QR_TOKEN_KEYS": [STRONG + "q"],
        "ID_NUMBER_KEY": STRONG + "n",
        "ID_HASH_KEY": STRONG + "h",
        "SQLALCHEMY_DATABASE_URI": "sqlite://",
    }
    config.update(overrides)
    return config


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"SECRET_KEY": None}, "SECRET_KEY"),
        ({"QR_TOKEN_KEYS": []}, "QR_TOKEN_KEYS"),
        ({"SECRET_KEY": "short-key"}, "SECRET_KEY"),
        ({"SECRET_KEY": "test-secret-key"}, "SECRET_KEY"),
        ({"QR_TOKEN_KEYS": ["new-key"]}, "QR_TOKEN_KEYS"),
        ({"QR_TOKEN_KEYS": ["old-key", STRONG + "q"]}, "QR_TOKEN_KEYS"),
        ({"QR_TOKEN_KEYS": [STRONG + "q", "short"]}, "QR_TOKEN_KEYS"),
        ({"ID_NUMBER_KEY": None}, "ID_NUMBER_KEY"),
        ({"ID_HASH_KEY": None}, "ID_HASH_KEY"),
        ({"ID_NUMBER_KEY": "short"}, "ID_NUMBER_KEY"),
        ({"ID_HASH_KEY": STRONG + "n"}, "ID_HASH_KEY"),
    ],
    ids=[
        "missing-secret", "missing-qr", "short-secret", "example-secret", "example-qr", "example-old-qr", "short-signing-qr",
        "missing-id-key", "missing-hash-key", "short-id-key", "hash-key-equals-id-key",
    ],
)
def test_weak_configuration_refused(overrides, expected):
    with pytest.raises(ConfigurationError, match=expected):
        create_app(production_config(**overrides))


def test_strong_configuration_starts():
    app = create_app(production_config(QR_TOKEN_KEYS=["a-shorter-old-key", STRONG + "q"]))

    assert app.config["SECRET_KEY"] == STRONG


@pytest.fixture
def public_id(app, import_roster):
    import_roster(ROSTER, "二级建造师", "certificate")
    with app.app_context():
        return db.session.scalar(select(Certificate.public_id).where(Certificate.number == NUMBER))


@pytest.mark.parametrize(
    "keys, valid",
    [(["old" * 12, "new" * 12], True), (["new" * 12], False)],
    ids=["old-key-listed", "old-key-removed"],
)
def test_qr_key_rotation(app, client, public_id, monkeypatch, keys, valid):
    token = make_token(public_id, ["old" * 12])
    monkeypatch.setitem(app.config, "QR_TOKEN_KEYS", keys)

    response = client.get(f"/v/{token}")

    assert (response.status_code == 200) is valid


def test_new_tokens_signed_with_last_key(public_id):
    from app.domain.tokens import read_token

    token = make_token(public_id, ["old" * 12, "new" * 12])

    assert read_token(token, ["new" * 12]) == public_id


def test_qr_token_holds_no_personal_data(public_id):
    token = make_token(public_id, ["new" * 12])
    payload = token.split(".")[0]
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode("utf-8", "replace")

    assert ID_NUMBER not in decoded
    assert NAME not in decoded
    assert NUMBER not in decoded


# --- logs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message, expected",
    [
        ("login 500109196409269696", "login 500*************96"),
        ("id 11010119900307001X end", "id 110*************1X end"),
        ("line\nFAKE entry", "line\\nFAKE entry"),
        ("cr\rx", "cr\\rx"),
        ("number 202421000001 phone 13800000001", "number 202421000001 phone 13800000001"),
        ("login ID500109196409269696", "login ID5001**********9696"),
        ("login ５００１０９１９６４０９２６９６９６", "login ５００１**********９６９６"),
        ("login 500109 19640926 9696", "login 5001** ******** 9696"),
    ],
    ids=["id-number", "id-number-x", "newline", "carriage-return", "short-numbers-kept", "letters-attached",
         "full-width", "spaced"],
)
def test_log_sanitiser(message, expected):
    assert sanitise(message) == expected


def _raise_with_id_number() -> None:
    # The message openpyxl gives for a cell holding an illegal character, here an ID number.
    raise ValueError("500101199001013032 cannot be used in worksheets.")


@pytest.mark.parametrize("how", ["exception", "exc_info", "stack_info"])
def test_traceback_id_number_masked(app, how):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.traceback")
    logger.addHandler(handler)
    try:
        try:
            _raise_with_id_number()
        except ValueError:
            if how == "exception":
                logger.exception("Export failed")
            elif how == "exc_info":
                logger.error("Export failed", exc_info=True)
            else:
                logger.error("Export failed for 500101199001013032", stack_info=True)
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()

    assert "Export failed" in output
    assert "500101199001013032" not in output
    assert "500*************32" in output
    if how != "stack_info":
        assert "Traceback (most recent call last)" in output
        assert "_raise_with_id_number" in output


def test_unexpected_error_log_masks_id_number(app, client, caplog, monkeypatch):
    from app.public import routes

    def broken(*args, **kwargs):
        _raise_with_id_number()

    monkeypatch.setattr(routes.lookup, "verify", broken)
    with caplog.at_level(logging.ERROR):
        response = client.get("/api/v1/verify", query_string={"number": NUMBER, "name": NAME})

    assert response.status_code == 500
    assert "Incident" in caplog.text
    assert "500*************32 cannot be used" in caplog.text
    assert "500101199001013032" not in caplog.text


def test_attacks_leave_no_id_number_in_logs(app, client, import_roster, caplog):
    caplog.set_level(logging.DEBUG)
    import_roster(ROSTER, "二级建造师", "certificate")
    with app.app_context():
        accounts.register_holder(name=NAME, id_type="居民身份证", id_number=ID_NUMBER, phone="13800000001", password=HOLDER_PASSWORD)
    other_ids = ["110101199003070011", "500151199311095022"]

    def post(url, data):
        page = client.get(url).get_data(as_text=True)
        return client.post(url, data={**data, "csrf_token": csrf_token(page)})

    for login in [ID_NUMBER, *other_ids, ID_NUMBER + "\nINFO forged line"]:
        for _ in range(6):  # past the lockout
            post("/login", {"login": login, "password": "wrong-password-1"})
    post("/password/forgot", {"id_number": ID_NUMBER, "phone": "13800000001"})
    post("/password/forgot", {"id_number": other_ids[0], "phone": "13800000002"})
    post("/password/reset", {"id_number": ID_NUMBER, "phone": "13800000001", "code": "000000", "password": "x" * 10, "confirm": "x" * 10})
    post("/admin/login", {"username": ID_NUMBER, "password": "Wrong!Password1"})
    client.get("/api/v1/verify", query_string={"number": NUMBER, "name": ID_NUMBER})
    client.get("/v/" + ID_NUMBER + ".forged")
    client.post("/login", data={"login": ID_NUMBER, "password": "x"})  # no CSRF token
    with app.app_context():
        accounts.clear_failures(accounts.address_key("127.0.0.1"))
        accounts.clear_failures(accounts.account_key("holder", ID_NUMBER))
    post("/login", {"login": ID_NUMBER, "password": HOLDER_PASSWORD})
    client.get("/me/certificates/202421000002.pdf")  # another holder's record

    messages = [record.getMessage() for record in caplog.records]
    text = "\n".join(messages)

    assert "Failed holder login" in text
    assert "Login locked" in text
    assert "not theirs" in text
    assert "Invalid QR token" in text
    assert "CSRF" in text
    for id_number in [ID_NUMBER, *other_ids]:
        assert id_number not in text
    assert not any("\n" in message for message in messages)


# --- rendering touches no outside file or socket -----------------------------------

_watch = {"active": False, "events": []}


def _audit(event, args):
    if not _watch["active"]:
        return
    if event == "open" and args and "passwd" in str(args[0]):
        _watch["events"].append((event, str(args[0])))
    elif event == "socket.connect":
        _watch["events"].append((event, repr(args[1])))


sys.addaudithook(_audit)


@pytest.fixture
def listener():
    """A TCP server on 127.0.0.1 that records whether anything connected."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    connected = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            connected.append(True)
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], connected
    stop.set()
    thread.join()
    server.close()


def test_pdf_rendering_reads_no_outside_file_or_socket(app, listener):
    from pathlib import Path

    from app.domain import documents

    from .test_documents import STATIC_DIR, sample_document

    port, connected = listener
    html = f"""<html><head><style>
      @font-face {{ font-family: x; src: url(http://127.0.0.1:{port}/font.ttf); }}
      body {{ background-image: url(file:///etc/passwd); }}
    </style><link rel="stylesheet" href="http://127.0.0.1:{port}/style.css"></head>
    <body><img src="file:///etc/passwd"><img src="http://127.0.0.1:{port}/x.png"><img src="/etc/passwd">
    <img src="static/../../../../etc/passwd"><p>x</p></body></html>"""
    doc = sample_document("qual_constructor")

    _watch["events"].clear()
    _watch["active"] = True
    try:
        try:
            documents._html_to_pdf(html, doc, static_dir=STATIC_DIR, instance_dir=Path(app.instance_path))
        except Exception:  # noqa: BLE001 (refusing the resource by raising is fine; touching it is not)
            pass
    finally:
        _watch["active"] = False

    assert _watch["events"] == []
    assert connected == []


# --- retention of lookup logs ------------------------------------------------------


@pytest.mark.parametrize("age_days, kept", [(181, False), (179, True)], ids=["past-retention", "within-retention"])
def test_events_purge_drops_old_lookups(app, runner, age_days, kept):
    from datetime import datetime, timedelta, timezone

    from app.models import LookupEvent

    at = datetime.now(timezone.utc) - timedelta(days=age_days)
    with app.app_context():
        db.session.add(LookupEvent(at=at, day=at.date(), channel="form", result="not_found"))
        db.session.commit()

    result = runner.invoke(args=["events", "purge"])

    assert result.exit_code == 0
    with app.app_context():
        assert (db.session.scalar(select(db.func.count(LookupEvent.id))) == 1) is kept


def test_lookup_events_hold_no_address_or_query(app, client, import_roster):
    from app.models import LookupEvent

    import_roster(ROSTER, "二级建造师", "certificate")
    client.get("/verify", query_string={"number": NUMBER, "name": NAME})

    with app.app_context():
        columns = set(LookupEvent.__table__.columns.keys())
        rows = [tuple(row) for row in db.session.execute(select(LookupEvent.__table__))]

    assert columns == {"id", "at", "day", "channel", "result"}
    assert not any(NAME in str(row) or NUMBER in str(row) for row in rows)


def test_instance_setup_writes_usable_keys(tmp_path, monkeypatch):
    from app.instance_setup import write_instance_config

    write_instance_config(tmp_path)
    monkeypatch.setenv("CERT_INSTANCE_PATH", str(tmp_path))
    app = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"})

    assert len(app.config["ID_NUMBER_KEY"]) >= 32
    assert app.config["ID_NUMBER_KEY"] != app.config["ID_HASH_KEY"]


def test_instance_setup_honours_instance_path(tmp_path, monkeypatch):
    from app import instance_setup

    default_config = instance_setup.PROJECT_ROOT / "instance" / "config.py"
    before = default_config.stat().st_mtime_ns if default_config.exists() else None
    monkeypatch.setenv("CERT_INSTANCE_PATH", str(tmp_path / "configured"))

    assert instance_setup.main() == 0
    written = tmp_path / "configured" / "config.py"

    assert written.is_file()
    assert written.stat().st_mode & 0o777 == 0o600
    assert (default_config.stat().st_mtime_ns if default_config.exists() else None) == before
    app = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"})
    assert app.instance_path == str(tmp_path / "configured")
    assert app.config["ID_NUMBER_KEY"] in written.read_text(encoding="utf-8")


def test_instance_setup_adds_id_keys_to_old_config(tmp_path):
    from app.instance_setup import write_instance_config

    old = f"SECRET_KEY = {STRONG!r}\nQR_TOKEN_KEYS = [{STRONG!r}]\n"
    (tmp_path / "config.py").write_text(old, encoding="utf-8")

    write_instance_config(tmp_path)
    text = (tmp_path / "config.py").read_text(encoding="utf-8")

    assert text.startswith(old)
    assert "ID_NUMBER_KEY = " in text
    assert "ID_HASH_KEY = " in text


# --- backups ---------------------------------------------------------------------


def test_backup_unit_umask_private():
    import configparser
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(root / "deploy" / "systemd" / "certificates-backup.service", encoding="utf-8")

    assert unit["Service"]["UMask"] == "0077"
    for guide in ("deploy.md", "deploy.en.md"):
        text = (root / "docs" / guide).read_text(encoding="utf-8")
        assert "install -d -m 0700 -o certificates -g certificates /srv/certificates/instance/backups" in text, guide
