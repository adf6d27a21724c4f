from flask import Blueprint

bp = Blueprint("holders", __name__)

from . import routes  # noqa: E402,F401
