#!/usr/bin/env bash
# Smoke test of the deployment files on this machine, on loopback only:
#   1. migrate a scratch PostgreSQL database and import one sample roster;
#   2. start gunicorn with deploy/gunicorn.conf.py, rate limits in Redis;
#   3. check a lookup, the rate-limit keys in Redis and the access log (no query strings);
#   4. `nginx -t` the site file (ports, paths and a self-signed TLS certificate swapped in),
#      start nginx on 127.0.0.1:18443, and check HTTPS, HSTS, static files and the internal PDF location.
# Everything it starts is stopped on exit. Usage: deploy/smoke.sh [DATABASE_NAME]
set -euo pipefail
cd "$(dirname "$0")/.."

DB_NAME="${1:-cert_deploy_smoke}"
PG="postgresql+psycopg://postgres@127.0.0.1:5432/${DB_NAME}"
# The Redis tests flush database 13, so the two can run together.
REDIS_DB="${SMOKE_REDIS_DB:-12}"
APP_PORT="${SMOKE_APP_PORT:-18080}"
HTTP_PORT="${SMOKE_HTTP_PORT:-18081}"
HTTPS_PORT="${SMOKE_HTTPS_PORT:-18443}"
command -v nginx >/dev/null || { echo "FAIL: nginx is not installed (apt-get install nginx)" >&2; exit 1; }
WORK="$(mktemp -d /tmp/cert-smoke.XXXXXX)"
VENV=.venv
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ -f "$WORK/nginx.pid" ]; then kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  # The work folder contains signing keys and a TLS key; the database is a scratch copy.
  rm -rf "$WORK"
  dropdb -h 127.0.0.1 -U postgres --if-exists --force "$DB_NAME" 2>/dev/null || true
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }

echo "== database ${DB_NAME}, Redis DB ${REDIS_DB}, work folder ${WORK}"
dropdb -h 127.0.0.1 -U postgres --if-exists "$DB_NAME"
createdb -h 127.0.0.1 -U postgres "$DB_NAME"
redis-cli -h 127.0.0.1 -n "$REDIS_DB" flushdb >/dev/null

export CERT_INSTANCE_PATH="$WORK/instance"
export CERT_SQLALCHEMY_DATABASE_URI="$PG"
export CERT_SECRET_KEY="$("$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(48))')"
export CERT_QR_TOKEN_KEYS="[\"$("$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(48))')\"]"
export CERT_ID_NUMBER_KEY="$("$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(48))')"
export CERT_ID_HASH_KEY="$("$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(48))')"
export CERT_RATELIMIT_STORAGE_URI="redis://127.0.0.1:6379/${REDIS_DB}"
export CERT_PROXY_FIX_X_FOR=1
export CERT_BASE_URL="https://127.0.0.1:${HTTPS_PORT}"
export GUNICORN_BIND="127.0.0.1:${APP_PORT}"
export GUNICORN_WORKERS=2
export GUNICORN_ACCESS_LOG="$WORK/access.log"
export GUNICORN_ERROR_LOG="$WORK/error.log"
mkdir -p "$CERT_INSTANCE_PATH"

"$VENV/bin/flask" --app wsgi db upgrade >/dev/null 2>&1 || fail "flask db upgrade"
"$VENV/bin/flask" --app wsgi roster import "tests/data/rosters/2024年度二级建造师考试合格人员名单.xlsx" \
  --exam 二级建造师 --kind 证书 | tail -1

echo "== gunicorn on 127.0.0.1:${APP_PORT}"
"$VENV/bin/gunicorn" --config deploy/gunicorn.conf.py wsgi:app &
PIDS+=($!)
for _ in $(seq 1 50); do
  curl -fsS -o /dev/null "http://127.0.0.1:${APP_PORT}/" 2>/dev/null && break
  sleep 0.2
done
LOOKUP="/api/v1/verify?number=202421000001&name=%E7%94%B0%E5%A8%9F"
body="$(curl -fsS "http://127.0.0.1:${APP_PORT}${LOOKUP}")" || fail "lookup through gunicorn"
echo "$body" | grep -q '"result":"valid"' || fail "lookup result: $body"
echo "lookup: valid"
[ -n "$(redis-cli -h 127.0.0.1 -n "$REDIS_DB" --scan --pattern 'LIMIT*' | head -1)" ] || fail "no rate-limit keys in Redis DB ${REDIS_DB}"
echo "rate limits: counters in Redis DB ${REDIS_DB}"
grep -q "/api/v1/verify" "$WORK/access.log" || fail "access log has no lookup line"
if grep -q "202421000001\|number=" "$WORK/access.log"; then fail "access log contains a query string"; fi
echo "access log: paths only"

echo "== nginx test configuration on 127.0.0.1:${HTTPS_PORT}"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=127.0.0.1" \
  -keyout "$WORK/privkey.pem" -out "$WORK/fullchain.pem" 2>/dev/null
mkdir -p "$CERT_INSTANCE_PATH/pdf-cache" && echo "%PDF-smoke" >"$CERT_INSTANCE_PATH/pdf-cache/smoke.pdf"
sed -e "s#listen 80;#listen 127.0.0.1:${HTTP_PORT};#" \
    -e "s#listen 443 ssl http2;#listen 127.0.0.1:${HTTPS_PORT} ssl http2;#" \
    -e "/listen \[::\]/d" \
    -e "s#/etc/ssl/certificates/#${WORK}/#g" \
    -e "s#/var/log/nginx/#${WORK}/nginx-#g" \
    -e "s#/srv/certificates/instance/#${CERT_INSTANCE_PATH}/#g" \
    -e "s#/srv/certificates/#${PWD}/#g" \
    -e "s#server 127.0.0.1:8000;#server 127.0.0.1:${APP_PORT};#" \
    deploy/nginx/certificates.conf >"$WORK/site.conf"
cat >"$WORK/nginx.conf" <<CONF
worker_processes 1;
pid ${WORK}/nginx.pid;
error_log ${WORK}/nginx-main.error.log warn;
events { worker_connections 256; }
http {
    include /etc/nginx/mime.types;
    client_body_temp_path ${WORK}/nginx-body;
    proxy_temp_path ${WORK}/nginx-proxy;
    fastcgi_temp_path ${WORK}/nginx-fastcgi;
    uwsgi_temp_path ${WORK}/nginx-uwsgi;
    scgi_temp_path ${WORK}/nginx-scgi;
    include ${WORK}/site.conf;
}
CONF
nginx -t -c "$WORK/nginx.conf" -e "$WORK/nginx-main.error.log"
nginx -c "$WORK/nginx.conf" -e "$WORK/nginx-main.error.log"
sleep 0.5
headers="$(curl -ksS -D - -o /dev/null "https://127.0.0.1:${HTTPS_PORT}${LOOKUP}")"
echo "$headers" | grep -qi "^strict-transport-security: max-age=31536000" || fail "no HSTS header: $headers"
echo "$headers" | head -1 | grep -q " 200" || fail "HTTPS lookup: $headers"
echo "https lookup: 200 with HSTS"
status="$(curl -ks -o /dev/null -w '%{http_code}' "https://127.0.0.1:${HTTPS_PORT}/static/vendor/htmx.min.js")"
[ "$status" = 200 ] || fail "static file through nginx: $status"
status="$(curl -ks -o /dev/null -w '%{http_code}' "https://127.0.0.1:${HTTPS_PORT}/_protected/pdf-cache/smoke.pdf")"
[ "$status" = 404 ] || fail "internal PDF location reachable from outside: $status"
status="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${HTTP_PORT}/verify")"
[ "$status" = 301 ] || fail "plain HTTP does not redirect: $status"
echo "static files: 200; internal PDF location: 404 from outside; HTTP: 301 to HTTPS"
if grep -q "202421000001\|number=" "$WORK"/nginx-certificates.access.log; then fail "nginx access log contains a query string"; fi
echo "nginx access log: paths only"

echo "OK: deployment smoke test passed"
