"""WSGI entry point: `gunicorn wsgi:app` or `flask --app wsgi ...`."""

import sys

from app import ConfigurationError, create_app

try:
    app = create_app()
except ConfigurationError as error:
    # One line naming the setting and the fix, instead of a traceback that ends with it.
    print(f"配置错误（configuration error）：{error}", file=sys.stderr)
    raise SystemExit(1) from None
