from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, SelectChoice, SelectField, StringField
from wtforms.validators import DataRequired, EqualTo, Length, Regexp, ValidationError

from ..domain.identity import ID_TYPES, IdentityError, normalise_id_number
from ..domain.passwords import holder_password_problem
from ..domain.roster import FieldError, parse_name


class RegisterForm(FlaskForm):
    name = StringField(_l("姓名"), validators=[DataRequired(_l("请填写姓名。")), Length(max=30)])
    id_type = SelectField(_l("证件类型"), choices=[SelectChoice(t) for t in ID_TYPES])
    id_number = StringField(_l("证件号码"), validators=[DataRequired(_l("请填写证件号码。")), Length(max=32)])
    phone = StringField(
        _l("手机号码"),
        validators=[DataRequired(_l("请填写手机号码。")), Regexp(r"^1\d{10}$", message=_l("手机号码应为 11 位数字，以 1 开头。"))],
    )
    password = PasswordField(
        _l("密码"), validators=[DataRequired(_l("请设置密码。")), Length(min=8, max=128, message=_l("密码至少 8 位。"))]
    )

    def validate_password(self, field: PasswordField) -> None:
        problem = holder_password_problem(field.data or "")
        if problem:
            raise ValidationError(problem)
    confirm = PasswordField(
        _l("确认密码"), validators=[DataRequired(_l("请再次输入密码。")), EqualTo("password", _l("两次输入的密码不一致。"))]
    )
    consent = BooleanField(_l("我已阅读并同意《个人信息保护告知书》"), validators=[DataRequired(_l("请阅读并同意个人信息保护告知书。"))])

    def validate_name(self, field: StringField) -> None:
        # The roster import's rules, so a registered name can match the name on a certificate.
        try:
            field.data = parse_name(field.data or "")
        except FieldError as error:
            raise ValidationError(error.reason) from error

    def validate_id_number(self, field: StringField) -> None:
        try:
            field.data = normalise_id_number(field.data or "", self.id_type.data)
        except IdentityError as error:
            raise ValidationError(str(error)) from error


class LoginForm(FlaskForm):
    login = StringField(_l("证件号码或手机号码"), validators=[DataRequired(_l("请填写证件号码或手机号码。")), Length(max=32)])
    password = PasswordField(_l("密码"), validators=[DataRequired(_l("请填写密码。")), Length(max=128)])


class ResetRequestForm(FlaskForm):
    id_number = StringField(_l("证件号码"), validators=[DataRequired(_l("请填写证件号码。")), Length(max=32)])
    phone = StringField(
        _l("注册时填写的手机号码"),
        validators=[DataRequired(_l("请填写手机号码。")), Regexp(r"^1\d{10}$", message=_l("手机号码应为 11 位数字，以 1 开头。"))],
    )


class ResetForm(ResetRequestForm):
    code = StringField(_l("短信验证码"), validators=[DataRequired(_l("请填写短信中的 6 位验证码。")), Length(max=10)])
    password = PasswordField(_l("新密码"), validators=[DataRequired(_l("请设置新密码。")), Length(max=128)])
    confirm = PasswordField(
        _l("确认新密码"), validators=[DataRequired(_l("请再次输入新密码。")), EqualTo("password", _l("两次输入的密码不一致。"))]
    )

    def validate_password(self, field: PasswordField) -> None:
        problem = holder_password_problem(field.data or "")
        if problem:
            raise ValidationError(problem)


class DeleteAccountForm(FlaskForm):
    password = PasswordField(_l("当前密码"), validators=[DataRequired(_l("请输入当前密码以确认注销。")), Length(max=128)])
