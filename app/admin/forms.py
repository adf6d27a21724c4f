from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.file import FileAllowed, FileField, FileRequired
from wtforms import BooleanField, PasswordField, SelectChoice, SelectField, StringField
from wtforms.validators import DataRequired, Length

from ..domain.catalogue import KIND_CERTIFICATE, KIND_PASS


class StaffLoginForm(FlaskForm):
    username = StringField(_l("用户名"), validators=[DataRequired(_l("请填写用户名。")), Length(max=50)])
    password = PasswordField(_l("密码"), validators=[DataRequired(_l("请填写密码。")), Length(max=128)])


class TotpForm(FlaskForm):
    code = StringField(
        _l("动态验证码（身份验证器应用中的 6 位数字）"),
        validators=[DataRequired(_l("请填写身份验证器应用显示的 6 位动态验证码。")), Length(max=10)],
    )


class UploadForm(FlaskForm):
    file = FileField(
        _l("名单文件（XLSX 或 CSV）"),
        validators=[FileRequired(_l("请选择要上传的名单文件。")), FileAllowed(["xlsx", "csv"], _l("只接受 .xlsx 或 .csv 文件。"))],
    )
    exam = SelectField(_l("考试项目（文件中没有“考试项目”列时必选）"), choices=[])
    kind = SelectField(
        _l("证书类别（文件中没有“证书类别”列时必选）"),
        choices=[
            SelectChoice("", _l("按文件内容")),
            SelectChoice(KIND_CERTIFICATE, _l("证书")),
            SelectChoice(KIND_PASS, _l("合格证明")),
        ],
    )
    include_hidden = BooleanField(_l("包括隐藏行（Excel 中隐藏或被筛选隐藏的行也导入）"))


class ConfirmForm(FlaskForm):
    """An empty form that carries the CSRF token for confirm and discard buttons."""
