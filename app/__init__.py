"""电子证书签发与查验系统: the application factory."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

from flask import Flask
from sqlalchemy.engine import URL

from .extensions import babel, csrf, db, limiter, login_manager, migrate

PROJECT_ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger(__name__)


class ConfigurationError(RuntimeError):
    """Raised when required settings are missing. The message names them and the fix."""


def with_hidden_parameters(engine_options: Mapping[str, Any]) -> dict:
    """Return a copy of `engine_options` with hide_parameters set.

    SQLAlchemy otherwise writes a failed statement's bound values (names,
    mobile numbers, ID numbers) into the exception message, which the 500
    incident line logs. The option is set over any value a deployment gives.
    """
    return {**engine_options, "hide_parameters": True}


def _lookup_bind(url: str, engine_options: Mapping[str, Any]) -> str | dict:
    """Return the "lookup" bind for `url`: on PostgreSQL an engine of its own whose connections stay in autocommit.

    Anonymous lookups run one SELECT each (lookup._fetch_postgresql). In
    autocommit mode that is one round trip, and with no reset on return the
    pool sends no ROLLBACK either. The ORM's engine keeps its transactions.
    It takes the pool size, overflow and recycle time from
    `engine_options` (SQLALCHEMY_ENGINE_OPTIONS), so each process may hold up
    to twice pool_size + max_overflow connections. pool_pre_ping is off here,
    because a lookup retries once on a lost connection itself, and a ping
    would be a second round trip.
    """
    if not url.startswith("postgresql"):
        return url
    options = dict(engine_options)
    options.update(
        url=url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, pool_use_lifo=True, pool_pre_ping=False
    )
    return options


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Create the application: defaults, then instance config.py, then CERT_* variables, then `config`."""
    app = Flask(
        __name__,
        instance_path=os.environ.get("CERT_INSTANCE_PATH") or str(PROJECT_ROOT / "instance"),
        instance_relative_config=True,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    configure_settings(app, config)
    configure_logging(app)
    configure_extensions(app)
    register_blueprints(app)
    register_error_handlers(app)
    register_cli(app)
    configure_proxy(app)
    return app


def configure_proxy(app: Flask) -> None:
    """Trust X-Forwarded-For/-Proto from PROXY_FIX_X_FOR proxies (nginx: 1), so rate limits see client addresses."""
    hops = int(app.config.get("PROXY_FIX_X_FOR") or 0)
    if hops > 0:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=0)


def configure_settings(app: Flask, config: Mapping[str, Any] | None) -> None:
    # JSON responses keep Chinese readable (田娟, not \u7530\u5a1f) for people reading them with curl.
    app.json.ensure_ascii = False
    app.config.from_object("app.config")
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env("CERT")
    if config:
        app.config.from_mapping(config)

    if not app.config["SQLALCHEMY_DATABASE_URI"]:
        app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + os.path.join(app.instance_path, "certificates.db")
    # A copy: the default dict lives in app.config and is shared by every app in this process.
    engine_options = with_hidden_parameters(app.config["SQLALCHEMY_ENGINE_OPTIONS"])
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # Writers wait for each other instead of failing with "database is locked".
        engine_options.setdefault("connect_args", {"timeout": 30})
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options
    lookup_url = app.config.get("LOOKUP_DATABASE_URL")
    if lookup_url or str(app.config["SQLALCHEMY_DATABASE_URI"]).startswith("postgresql"):
        # Flask-SQLAlchemy creates one engine per bind; lookup.lookup_engine picks this one.
        binds = dict(app.config.get("SQLALCHEMY_BINDS") or {})
        primary_url = str(app.config["SQLALCHEMY_DATABASE_URI"])
        # SQLite's engine options (connect_args) would not suit a PostgreSQL replica.
        options = app.config["SQLALCHEMY_ENGINE_OPTIONS"] if primary_url.startswith("postgresql") else {}
        binds["lookup"] = _lookup_bind(str(lookup_url or primary_url), options)
        app.config["SQLALCHEMY_BINDS"] = binds
    if app.config.get("SQLALCHEMY_BINDS"):
        # Flask-SQLAlchemy gives binds none of SQLALCHEMY_ENGINE_OPTIONS, so each bind gets the option itself.
        app.config["SQLALCHEMY_BINDS"] = {
            name: with_hidden_parameters({"url": bind} if isinstance(bind, (str, URL)) else bind)
            for name, bind in app.config["SQLALCHEMY_BINDS"].items()
        }
    if app.config.get("TESTING"):
        # Fixed keys, so test and benchmark databases stay readable across runs.
        app.config["ID_NUMBER_KEY"] = app.config.get("ID_NUMBER_KEY") or "test-id-number-key-not-for-production"
        app.config["ID_HASH_KEY"] = app.config.get("ID_HASH_KEY") or "test-id-hash-key-not-for-production"
    for key in ("SESSION_COOKIE_SECURE", "REMEMBER_COOKIE_SECURE"):
        if app.config.get(key) is None:
            app.config[key] = str(app.config.get("BASE_URL", "")).startswith("https://")
    validate_settings(app)


def configure_logging(app: Flask) -> None:
    """Send the app's INFO lines (logins, uploads, batches) somewhere with a timestamp.

    Under gunicorn the records go to gunicorn's error log; elsewhere to stderr.
    Nothing is changed when the root logger already has handlers (tests, an
    embedding program).
    """
    root = logging.getLogger()
    if root.handlers:
        return
    gunicorn_error = logging.getLogger("gunicorn.error")
    if gunicorn_error.handlers:
        root.handlers = list(gunicorn_error.handlers)
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
        root.addHandler(handler)
    root.setLevel(app.config.get("LOG_LEVEL", "INFO"))


def validate_settings(app: Flask) -> None:
    """Reject a configuration that would issue unverifiable codes or forgeable sessions."""
    from .security import require_safe_xml_parser, weak_keys

    require_safe_xml_parser()
    if app.config.get("TESTING"):
        return
    missing = [key for key in ("SECRET_KEY", "QR_TOKEN_KEYS", "ID_NUMBER_KEY", "ID_HASH_KEY") if not app.config.get(key)]
    if missing:
        raise ConfigurationError(
            "缺少配置项 %s：请在 instance/config.py 中设置，或设置环境变量 CERT_%s；"
            "演示环境可运行 python -m app.instance_setup 生成。" % ("、".join(missing), missing[0])
        )
    weak = weak_keys(app.config)
    if weak:
        same = app.config.get("ID_NUMBER_KEY") == app.config.get("ID_HASH_KEY")
        raise ConfigurationError(
            "配置项 %s（环境变量 %s）的密钥太短（少于 %s 个字符）或是文档中的示例值%s：请换成随机生成的密钥，"
            "例如 python3 -c 'import secrets; print(secrets.token_urlsafe(48))' 的输出。"
            % (
                "、".join(weak),
                "、".join(f"CERT_{name}" for name in weak),
                app.config["MIN_KEY_LENGTH"],
                "；ID_HASH_KEY 不能与 ID_NUMBER_KEY 相同" if same else "",
            )
        )
    font = PROJECT_ROOT / "static" / "fonts" / "wqy-zenhei.ttc"
    if not font.is_file():
        raise ConfigurationError(f"缺少证书字体文件 {font}，无法生成证书。")


def configure_extensions(app: Flask) -> None:
    db.init_app(app)
    from . import db_settings

    db_settings.configure(app)
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"))
    csrf.init_app(app)
    from .web import default_locale_selector

    babel.init_app(app, locale_selector=default_locale_selector(app))
    limiter.init_app(app)

    from .services import lookup_guard

    lookup_guard.init_app(app)
    login_manager.init_app(app)

    from . import auth  # registers the user loader

    auth.configure_login(app)

    from .security import configure_security

    configure_security(app)

    from .web import configure_templates

    configure_templates(app)


def register_blueprints(app: Flask) -> None:
    from .admin import bp as admin_bp
    from .holders import bp as holders_bp
    from .public import bp as public_bp

    app.register_blueprint(public_bp)
    app.register_blueprint(holders_bp)
    app.register_blueprint(admin_bp, url_prefix="/admin")


def register_error_handlers(app: Flask) -> None:
    from .errors import register

    register(app)


def register_cli(app: Flask) -> None:
    from .cli import register

    register(app)
