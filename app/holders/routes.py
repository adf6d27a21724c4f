"""Holder pages: register, log in, list, download and print certificates."""

from __future__ import annotations

import logging

from flask import abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy.exc import IntegrityError

from ..domain.documents import MissingGlyphError
from ..extensions import db
from ..models import Certificate
from ..services import accounts, lookup
from ..services.certificates import certificate_pdf
from . import bp
from .forms import LoginForm, RegisterForm

logger = logging.getLogger(__name__)


@bp.route("/register", methods=["GET", "POST"])
def register():
    form = RegisterForm()
    if form.validate_on_submit():
        try:
            holder = accounts.register_holder(
                name=form.name.data,
                id_type=form.id_type.data,
                id_number=form.id_number.data,
                phone=form.phone.data,
                password=form.password.data,
            )
        except IntegrityError:
            db.session.rollback()
            form.id_number.errors.append("该证件号码或手机号码已注册，请直接登录；忘记密码请联系服务窗口。")
        else:
            login_user(holder)
            flash("注册成功。", "success")
            return redirect(url_for(".certificates"), 303)
    return render_template("holders/register.html", form=form)


@bp.route("/login", methods=["GET", "POST"])
def login():
    form = LoginForm()
    if form.validate_on_submit():
        holder = accounts.authenticate_holder(form.login.data, form.password.data)
        if holder is not None:
            login_user(holder)
            return redirect(url_for(".certificates"), 303)
        form.password.errors.append("证件号码（或手机号码）或密码不正确。")
    return render_template("holders/login.html", form=form)


@bp.post("/logout")
def logout():
    logout_user()
    flash("您已退出登录。", "info")
    return redirect(url_for("public.index"), 303)


def _holder_required() -> None:
    if getattr(current_user, "is_staff", True):
        abort(403)


@bp.get("/me")
@login_required
def certificates():
    _holder_required()
    items = lookup.certificates_of(current_user.name, current_user.id_number)
    return render_template("holders/certificates.html", certificates=items)


def _own_certificate(number: str) -> Certificate:
    """Load one of the current holder's certificates; anyone else's answers exactly like a missing one."""
    _holder_required()
    for certificate in lookup.certificates_of(current_user.name, current_user.id_number):
        if certificate.number == number:
            return certificate
    abort(404)


@bp.get("/me/certificates/<number>.pdf")
@login_required
def download(number: str):
    certificate = _own_certificate(number)
    disposition = "inline" if request.args.get("inline") else "attachment"
    return _pdf_response(certificate, disposition)


@bp.get("/me/certificates/<number>/print")
@login_required
def print_view(number: str):
    certificate = _own_certificate(number)
    return render_template("holders/print.html", certificate=certificate)


def _pdf_response(certificate: Certificate, disposition: str):
    try:
        pdf = certificate_pdf(certificate)
    except MissingGlyphError as error:
        logger.error("Certificate %s cannot be rendered: %s", certificate.number, error)
        return render_template("error.html", code=500, message=f"{error}。请联系发证机关处理。"), 500

    response = make_response(pdf)
    response.headers["Content-Type"] = "application/pdf"
    filename = f"{certificate.number}.pdf"
    response.headers["Content-Disposition"] = f"{disposition}; filename={filename}"
    response.headers["Cache-Control"] = "no-store"
    return response
