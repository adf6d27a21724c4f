"""gunicorn with deploy/gunicorn.conf.py keeps query strings and whole QR tokens out of its access and error logs."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from .test_nginx import GUNICORN, PROJECT_ROOT, app_server_environment, free_port, stop, wait_for_port

pytestmark = pytest.mark.skipif(not GUNICORN.is_file(), reason="gunicorn is not installed next to the Python running the tests")

NUMBER = "202421000001"
TOKEN = "ImtZR2pSTjkxR0h2dllWRkQi.eTQzEfvgfsm60g1U2eH3i97qOd4"


def send_raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        return connection.recv(4096)


def test_logs_hold_no_query_or_token(app, tmp_path):
    port = free_port()
    error_log, access_log = tmp_path / "error.log", tmp_path / "access.log"
    environment = app_server_environment(app, app.instance_path, port, access_log, error_log)
    command = [str(GUNICORN), "--config", "deploy/gunicorn.conf.py", "--no-control-socket", "wsgi:app"]
    server = subprocess.Popen(command, cwd=PROJECT_ROOT, env=environment, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, server, error_log)
        # Raw UTF-8 in the request line: gunicorn rejects it and quotes the line in its error log.
        rejected = send_raw(port, f"GET /api/v1/verify?number={NUMBER}&name=田娟 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        rejected_token = send_raw(port, f"GET /v/{TOKEN}田 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answered = send_raw(port, f"GET /api/v1/verify?number={NUMBER}&name=%E7%94%B0 HTTP/1.0\r\n\r\n".encode())
        answered_token = send_raw(port, f"GET /v/{TOKEN} HTTP/1.0\r\n\r\n".encode())
        deadline = time.monotonic() + 10
        while access_log.read_text().count("\n") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop(server)

    assert rejected.startswith(b"HTTP/1.1 400")
    assert rejected_token.startswith(b"HTTP/1.1 400")
    assert answered.startswith(b"HTTP/1.0 200") or answered.startswith(b"HTTP/1.1 200")
    assert b" 404 " in answered_token.split(b"\r\n", 1)[0]
    errors, accesses = error_log.read_text(), access_log.read_text()
    assert "Invalid HTTP request line: 'GET /api/v1/verify?- HTTP/1.1'" in errors
    assert "'GET /v/ImtZR2... HTTP/1.1'" in errors
    for log in (errors, accesses):
        assert NUMBER not in log
        assert TOKEN[:10] not in log
    assert '"GET /api/v1/verify HTTP/1.0" 200' in accesses
    assert '"GET /v/ImtZR2... HTTP/1.0" 404' in accesses
