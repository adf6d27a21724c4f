"""电子证书签发与查验系统: the application factory."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

from flask import Flask

from .extensions import babel, csrf, db, limiter, login_manager, migrate

PROJECT_ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger(__name__)


class ConfigurationError(RuntimeError):
    """Raised when required settings are missing. The message names them and the fix."""


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
    configure_extensions(app)
    register_blueprints(app)
    register_error_handlers(app)
    register_cli(app)
    return app


def configure_settings(app: Flask, config: Mapping[str, Any] | None) -> None:
    app.config.from_object("app.config")
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env("CERT")
    if config:
        app.config.from_mapping(config)

    if not app.config["SQLALCHEMY_DATABASE_URI"]:
        app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + os.path.join(app.instance_path, "certificates.db")
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        # Writers wait for each other instead of failing with "database is locked".
        app.config["SQLALCHEMY_ENGINE_OPTIONS"].setdefault("connect_args", {"timeout": 30})
    validate_settings(app)


def validate_settings(app: Flask) -> None:
    """Reject a configuration that would issue unverifiable codes or forgeable sessions."""
    if app.config.get("TESTING"):
        return
    missing = [key for key in ("SECRET_KEY", "QR_TOKEN_KEYS") if not app.config.get(key)]
    if missing:
        raise ConfigurationError(
            "缺少配置项 %s：请在 instance/config.py 中设置，或设置环境变量 CERT_%s；"
            "演示环境可运行 python -m app.instance_setup 生成。" % ("、".join(missing), missing[0])
        )
    font = PROJECT_ROOT / "static" / "fonts" / "wqy-zenhei.ttc"
    if not font.is_file():
        raise ConfigurationError(f"缺少证书字体文件 {font}，无法生成证书。")


def configure_extensions(app: Flask) -> None:
    db.init_app(app)
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"))
    csrf.init_app(app)
    babel.init_app(app)
    limiter.init_app(app)
    login_manager.init_app(app)

    from . import auth  # registers the user loader

    auth.configure_login(app)

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
