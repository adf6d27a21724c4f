"""Template helpers and htmx conventions shared by every blueprint."""

from __future__ import annotations

from urllib.parse import urlsplit

import flask_babel
from babel import Locale
from flask import Flask, Response, has_app_context, request
from jinja2 import pass_context, pass_eval_context
from markupsafe import Markup

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
    app.jinja_env.globals["cached_fragment"] = cached_fragment
    app.jinja_env.extend(fragment_cache={}, site_translations=None)
    # Replaces the callables Flask-Babel installed, so this must run after babel.init_app.
    # Set directly rather than through install_gettext_callables: its newstyle
    # wrappers, and the `_` alias of jinja2.ext.i18n, send every `_()` through
    # three Context.call dispatches and a Markup format even without variables.
    app.jinja_env.newstyle_gettext = True
    app.jinja_env.globals.update(_=template_gettext, gettext=template_gettext, ngettext=template_ngettext)

    @app.after_request
    def vary_on_htmx(response: Response) -> Response:
        # Pages and their fragments share URLs, so caches must key on the header.
        if "Vary" in response.headers:
            response.vary.add("HX-Request")
        else:
            response.headers["Vary"] = "HX-Request"
        return response


def default_locale_selector(app: Flask):
    """Return a Flask-Babel locale selector that returns BABEL_DEFAULT_LOCALE, parsed once.

    The site has one language. Without a selector, Flask-Babel parses the
    default locale string again in every request that translates text.
    """
    locale = Locale.parse(app.config["BABEL_DEFAULT_LOCALE"])
    return lambda: locale


def site_translations(environment):
    """Return the translations of the site's one language, loaded once per app.

    The locale is fixed (default_locale_selector), so the translations are
    too. Looking them up through Flask-Babel in each request, and through the
    application context for every `_()` call, took about a tenth of the CPU
    time of an htmx lookup (in-process, on the 2-core benchmark VM).
    NOTE: the cached object ignores a locale switched with
    flask_babel.force_locale; nothing in the app does that.
    """
    translations = environment.site_translations
    if translations is None:
        translations = flask_babel.get_translations()
        if has_app_context():
            environment.site_translations = translations
    return translations


MAX_CACHED_FRAGMENTS = 256


@pass_context
def cached_fragment(context, name: str, caller) -> Markup:
    """Render the body of `{% call cached_fragment("name") %}...{% endcall %}` once per process, then reuse it.

    For layout markup that is the same for every request in one language:
    translated text and URLs of endpoints without arguments, nothing from the
    request, the user or the session. The key contains the translations in use
    and the script root, the two things such markup can vary by. Each `_()`
    or `url_for` costs 3 to 5 µs of CPU time (measured in-process on the
    2-core benchmark VM), and the layout around the /verify form has about 20.
    """
    fragments = context.environment.fragment_cache
    key = (name, site_translations(context.environment), request.script_root)
    html = fragments.get(key)
    if html is None:
        html = caller()
        if len(fragments) < MAX_CACHED_FRAGMENTS:
            fragments[key] = html
    return html


@pass_eval_context
def template_gettext(eval_context, string: str, /, **variables) -> str:
    """Jinja's newstyle `_()`: translate, escape the variables in autoescaped templates, then format.

    As in Jinja's own newstyle gettext, the string is a format string even
    without variables, so "100%%" shows as "100%".
    """
    text = site_translations(eval_context.environment).ugettext(string)
    if eval_context.autoescape:
        text = Markup(text)
    return text % variables if variables or "%" in text else text


@pass_eval_context
def template_ngettext(eval_context, singular: str, plural: str, number: int, /, **variables) -> str:
    """Jinja's newstyle `ngettext()`, with `num` set to the number as Jinja does."""
    variables.setdefault("num", number)
    text = site_translations(eval_context.environment).ungettext(singular, plural, number)
    if eval_context.autoescape:
        text = Markup(text)
    return text % variables


def cn_date(value) -> str:
    return f"{value.year}年{value.month}月{value.day}日" if value else ""


def cn_month(value) -> str:
    return f"{value.year}年{value.month:02d}月" if value else ""
