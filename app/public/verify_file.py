"""/verify/file: an employer uploads a certificate PDF and learns whether it is genuine and unchanged."""

from __future__ import annotations

import logging

from flask import current_app, render_template, request
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from werkzeug.exceptions import RequestEntityTooLarge

from ..services.certificates import FileVerdict, verify_uploaded_pdf
from ..web import is_htmx
from . import bp
from .routes import lookup_limit

logger = logging.getLogger(__name__)

# Room for the multipart headers and the CSRF field around the file itself.
FORM_OVERHEAD_BYTES = 16 * 1024


class VerifyFileForm(FlaskForm):
    file = FileField(_l("证书 PDF 文件"), validators=[FileRequired(_l("请选择要查验的证书 PDF 文件。"))])


def _render(form: VerifyFileForm, verdict: FileVerdict | None = None, error: str | None = None, status: int = 200):
    if is_htmx():
        # htmx 2 swaps no 4xx response, so the fragment with the message comes with 200. It replaces
        # #verify-file-result, so the verdict on an earlier file cannot pass for this file's verdict.
        return render_template("public/_verify_file_result.html", form=form, verdict=verdict, error=error), 200
    return render_template("public/verify_file.html", form=form, verdict=verdict, error=error), status


@bp.get("/verify/file")
def verify_file_form():
    return _render(VerifyFileForm())


@bp.post("/verify/file")
@lookup_limit
def verify_file():
    limit = current_app.config["VERIFY_FILE_MAX_BYTES"]
    size = f"{limit // (1024 * 1024)} MB" if limit >= 1024 * 1024 else f"{limit // 1024} KB"
    too_large = f"上传的文件超过 {size}，不是本系统签发的证书 PDF。请上传从本站下载的证书文件。"
    if request.content_length is not None and request.content_length > limit + FORM_OVERHEAD_BYTES:
        return _render(VerifyFileForm(formdata=None), error=too_large, status=413)
    # Enforced again while the body is read, for chunked uploads without a length.
    request.max_content_length = limit + FORM_OVERHEAD_BYTES

    try:
        form = VerifyFileForm()
    except RequestEntityTooLarge:
        # A chunked body past the limit, stopped while the form was read.
        return _render(VerifyFileForm(formdata=None), error=too_large, status=413)
    if not form.validate_on_submit():
        error = "；".join(message for messages in form.errors.values() for message in messages)
        return _render(form, error=error or "请选择要查验的证书 PDF 文件。", status=400)

    data = form.file.data.read(limit + 1)
    if len(data) > limit:
        return _render(form, error=too_large, status=413)
    if not data:
        return _render(form, error="上传的文件是空的，请重新选择从本站下载的证书 PDF 文件。", status=400)
    verdict = verify_uploaded_pdf(data)
    return _render(form, verdict=verdict)
