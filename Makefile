# Two entry points, both on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PYTHON ?= python3
# Port of the demo server: `make run PORT=5055`. QR codes in the demo point at the same port.
PORT ?= 5000
BASE_URL = http://127.0.0.1:$(PORT)
FLASK = $(VENV)/bin/flask --app wsgi

.PHONY: run test install

# Install, create the SQLite database, load the sample rosters, print a staff
# account, then serve on 127.0.0.1:$(PORT). CERT_BASE_URL overrides the
# BASE_URL in instance/config.py, so QR codes point at the port in use.
run: install
	$(VENV)/bin/python -m app.instance_setup
	$(FLASK) keys init --if-missing
	$(FLASK) db upgrade
	CERT_BASE_URL=$(BASE_URL) $(FLASK) demo
	@# The production config keeps query strings (names, ID numbers) and QR tokens out of the access log.
	CERT_BASE_URL=$(BASE_URL) GUNICORN_BIND=127.0.0.1:$(PORT) GUNICORN_WORKERS=2 \
		$(VENV)/bin/gunicorn --config deploy/gunicorn.conf.py wsgi:app

# Run the test suite (SQLite, or the database TEST_DATABASE_URL names).
test: install
	$(VENV)/bin/python -m pytest

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-test.txt
	touch $@
