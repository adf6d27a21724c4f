from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import DataRequired, Length


class VerifyForm(FlaskForm):
    """The public lookup form. It is a GET search that changes nothing, so it carries no CSRF token."""

    class Meta:
        csrf = False

    number = StringField(_l("证书编号"), validators=[DataRequired(_l("请填写证书编号。")), Length(max=64)])
    name = StringField(_l("姓名"), validators=[DataRequired(_l("请填写持证人姓名。")), Length(max=60)])
