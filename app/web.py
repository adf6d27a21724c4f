"""Template helpers and htmx conventions shared by every blueprint."""

from __future__ import annotations

from flask import Flask, Response, request

from .domain.identity import mask_id_number


def is_htmx() -> bool:
    """Tell whether htmx sent the request and wants a fragment (not a history restore)."""
    return request.headers.get("HX-Request") == "true" and request.headers.get("HX-History-Restore-Request") != "true"


def hx_redirect(response: Response, url: str) -> Response:
    response.headers["HX-Redirect"] = url
    return response


def configure_templates(app: Flask) -> None:
    app.jinja_env.filters["mask_id"] = mask_id_number
    app.jinja_env.filters["cn_date"] = cn_date
    app.jinja_env.filters["cn_month"] = cn_month
    app.jinja_env.globals["is_htmx"] = is_htmx

    @app.after_request
    def vary_on_htmx(response: Response) -> Response:
        # Pages and their fragments share URLs, so caches must key on the header.
        response.vary.add("HX-Request")
        return response


def cn_date(value) -> str:
    return f"{value.year}年{value.month}月{value.day}日" if value else ""


def cn_month(value) -> str:
    return f"{value.year}年{value.month:02d}月" if value else ""
