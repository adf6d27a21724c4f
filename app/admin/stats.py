"""Staff statistics page: certificates issued, and lookups and downloads per day."""

from __future__ import annotations

from flask import render_template

from ..domain.catalogue import KIND_LABELS
from ..services import stats
from ..services.events import CHANNELS
from . import bp

CHANNEL_LABELS = {"form": "查验页面", "qr": "扫描二维码", "api": "查验接口", "file": "批量文件"}
RESULT_LABELS = {"valid": "有效", "revoked": "已撤销", "not_found": "未查到"}

# Size of the daily bar chart in SVG user units.
CHART_WIDTH = 900
CHART_HEIGHT = 220
CHART_MARGIN = 30


def bar_chart(values: list[int]) -> dict:
    """Return bar positions for the inline SVG chart; the tallest bar fills the height."""
    top = max(values, default=0) or 1
    slot = (CHART_WIDTH - CHART_MARGIN) / max(len(values), 1)
    bars = []
    for index, value in enumerate(values):
        height = round((CHART_HEIGHT - 2 * CHART_MARGIN) * value / top, 1)
        bars.append(
            {
                "x": round(CHART_MARGIN + index * slot + slot * 0.15, 1),
                "y": round(CHART_HEIGHT - CHART_MARGIN - height, 1),
                "width": round(slot * 0.7, 1),
                "height": height,
                "value": value,
            }
        )
    return {"width": CHART_WIDTH, "height": CHART_HEIGHT, "margin": CHART_MARGIN, "top": top, "bars": bars}


@bp.get("/stats")
def statistics():
    issued = stats.issued()
    days = stats.days()
    return render_template(
        "admin/stats.html",
        issued=issued,
        issued_total=sum(row.count for row in issued),
        days=days,
        lookup_chart=bar_chart([day.lookup_total for day in days]),
        download_chart=bar_chart([day.downloads for day in days]),
        channels=stats.lookups_by_channel(),
        channel_labels={channel: CHANNEL_LABELS[channel] for channel in CHANNELS},
        result_labels=RESULT_LABELS,
        kind_labels=KIND_LABELS,
    )
