"""The dashboard's blueprint, shared by its read-only pages (dashboard.py) and its state-changing ones (manage.py)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard", template_folder="templates", static_folder="static")
