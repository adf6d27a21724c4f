"""Template helpers and htmx conventions shared by every blueprint."""

from __future__ import annotations

from urllib.parse import urlsplit

import flask_babel
from flask import Flask, Response, g, has_app_context, request

from .domain.identity import mask_id_number

# Longest HX-Current-URL taken as the page to come back to after login.
MAX_NEXT_LENGTH = 2000


def is_htmx() -> bool:
    """Tell whether htmx sent the request and wants a fragment (not a history restore)."""
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-History-Restore-Request") != "true"


def hx_redirect(response: Response, url: str) -> Response:
    response.headers["HX-Redirect"] = url
    return response


def login_next() -> str | None:
    """Return the path to come back to after logging in, or None.

    An htmx request (a poll, a fragment) comes back to the page it was sent
    from, never to the fragment's own URL. Another GET comes back to itself,
    and other methods come back nowhere, because their form data is gone.
    """
    if is_htmx():
        return current_page_path()
    if request.method != "GET":
        return None
    return request.full_path.removesuffix("?")


def current_page_path() -> str | None:
    """Return the path and query of htmx's HX-Current-URL header when it is on this site, else None.

    The header is client input, so another origin, a scheme-relative `//`
    path, a backslash or a control character gives None rather than an
    open redirect.
    """
    url = request.headers.get("HX-Current-URL", "")
    if not url or len(url) > MAX_NEXT_LENGTH or any(ord(c) < 32 or c in "\\\x7f" for c in url):
        return None
    parts = urlsplit(url)
    if (parts.scheme, parts.netloc) != (request.scheme, request.host):
        return None
    if not parts.path.startswith("/") or parts.path.startswith("//"):
        return None
    return parts.path + (f"?{parts.query}" if parts.query else "")


def configure_templates(app: Flask) -> None:
    app.jinja_env.filters["mask_id"] = mask_id_number
    app.jinja_env.filters["cn_date"] = cn_date
    app.jinja_env.filters["cn_month"] = cn_month
    app.jinja_env.globals["is_htmx"] = is_htmx
    # Replaces the callables Flask-Babel installed, so this must run after babel.init_app.
    app.jinja_env.install_gettext_callables(
        gettext=lambda string: request_translations().ugettext(string),
        ngettext=lambda singular, plural, n: request_translations().ungettext(singular, plural, n),
        newstyle=True,
    )

    @app.after_request
    def vary_on_htmx(response: Response) -> Response:
        # Pages and their fragments share URLs, so caches must key on the header.
        response.vary.add("HX-Request")
        return response


def request_translations():
    """Return Flask-Babel's translations for this request, looked up once per application context.

    Flask-Babel's own template callables resolve the domain and the locale
    again for every `_()` call. The full /verify page has about 30 of them,
    and they took about a quarter of its rendering CPU time (measured on the
    2-core benchmark VM).
    NOTE: the cached object ignores a locale switched mid-request with
    flask_babel.force_locale; nothing in the app does that.
    """
    if not has_app_context():
        return flask_babel.get_translations()
    translations = g.get("_template_translations")
    if translations is None:
        translations = g._template_translations = flask_babel.get_translations()
    return translations


def cn_date(value) -> str:
    return f"{value.year}年{value.month}月{value.day}日" if value else ""


def cn_month(value) -> str:
    return f"{value.year}年{value.month:02d}月" if value else ""
