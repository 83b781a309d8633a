"""Render an :class:`~featmatch.evaluation.runner.EvalReport`: Markdown tables and a PNG plot.

The plot is drawn with OpenCV (no matplotlib dependency): MMA and homography accuracy against
the pixel threshold, one line per descriptor, over all pairs.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from .metrics import ACCURACY_THRESHOLDS, AUC_MAX_PX, CURVE_THRESHOLDS
from .runner import EvalReport

#: Line colours (BGR) of the descriptors in the plot, in column order.
COLORS = ((200, 90, 30), (40, 150, 240), (60, 170, 60), (40, 40, 220), (170, 60, 170), (120, 120, 120))
#: Rows of the MMA part of the table (px).
MMA_ROWS = (1, 3, 5, 10)


def _fmt(v: float, digits: int = 3) -> str:
    return "inf" if not math.isfinite(v) else f"{v:.{digits}f}"


def _pairs(n: int) -> str:
    return f"{n} pair{'s' if n != 1 else ''}"


def _scope_title(scope: str, n: int) -> str:
    label = {"all": "all pairs", "real": "real pairs", "synthetic": "synthetic pairs"}.get(scope, f"group {scope}")
    return f"{label} ({_pairs(n)})"


def summary_table(report: EvalReport, scope: str) -> list[str]:
    """Markdown lines of one scope's table: metrics as rows, descriptors side by side."""
    n = dict(report.scopes)[scope]
    cols = list(report.descriptors) + list(report.skipped)
    lines = [f"### {_scope_title(scope, n)}", "", "| metric | " + " | ".join(cols) + " |"]
    lines.append("|---|" + "---:|" * len(cols))
    skip_cells = ["skipped"] * len(report.skipped)

    def row(label: str, values: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(values + skip_cells) + " |")

    sums = [report.summary(d, scope) for d in report.descriptors]
    for k, t in enumerate(ACCURACY_THRESHOLDS):
        row(f"H accuracy @{t}px", [_fmt(s.accuracy[k]) + (f" ± {_fmt(s.accuracy_std[k])}" if s.runs > 1 else "")
                                   for s in sums])  # fmt: skip
    row(f"H AUC @{AUC_MAX_PX:g}px", [_fmt(s.auc) for s in sums])
    row("median corner error (px)", [_fmt(s.median_error, 2) for s in sums])
    for t in MMA_ROWS:
        row(f"MMA @{t}px", [_fmt(s.mma[CURVE_THRESHOLDS.index(t)]) for s in sums])
    row("matches / pair", [f"{s.matches:.1f}" for s in sums])
    row("inliers / pair", [f"{s.inliers:.1f}" for s in sums])
    row("failed pairs", [f"{s.failures}/{s.pairs}" for s in sums])
    row("describe ms / image", [f"{s.describe_ms:.0f}" for s in sums])
    return lines


def markdown(report: EvalReport, per_pair: bool = False) -> str:
    """The report as Markdown: a header, one table per scope and, with ``per_pair``, a pair table."""
    st = report.settings
    lines = [
        f"## featmatch eval: {_pairs(st.get('pairs', 0))} ({st.get('real_pairs', 0)} real, "
        f"{st.get('synthetic_pairs', 0)} synthetic), {st.get('detect', {}).get('max_keypoints', '?')} keypoints "
        f"per image, the same keypoints for every descriptor; {report.seconds:.1f} s",
        "",
        "H accuracy @t: fraction of pairs whose mean corner error is <= t px (a failed estimate counts "
        "as a miss); MMA @t: fraction of ratio-test matches within t px of the true homography, averaged over pairs.",
        "",
    ]
    runs = st.get("ransac_runs", 1)
    if runs > 1:
        lines += [
            f"H accuracy and AUC: mean of {runs} robust fits per pair (its matches in their order and in {runs - 1} "
            "seeded random orders), ± the standard deviation across the fits; median corner error and failures: "
            "the first fit.",
            "",
        ]
    peers = st.get("peers") or {}
    if peers:
        lines += ["Reference rows (published weights, given by the user; same keypoints and patches):", ""]
        lines += [
            f"- {name}: {p.get('reference', '')}, `{p.get('path', '')}` (sha256 {p.get('sha256', '')[:12]})"
            for name, p in peers.items()
        ]
        lines.append("")
    for scope, _ in report.scopes:
        lines += summary_table(report, scope) + [""]
    for name, why in report.skipped.items():
        lines.append(f"- {name}: skipped: {why}")
    if report.skipped:
        lines.append("")
    if per_pair and report.descriptors:
        lines += ["### per pair: corner error in px (inliers / matches)", ""]
        lines.append("| pair | group | " + " | ".join(report.descriptors) + " |")
        lines.append("|---|---|" + "---:|" * len(report.descriptors))
        k = len(report.descriptors)
        for i in range(0, len(report.results), k):
            rs = report.results[i : i + k]
            cells = [f"{_fmt(r.corner_error, 2)} ({r.inliers}/{r.matches})" for r in rs]
            lines.append(f"| {rs[0].pair} | {rs[0].group} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _panel(canvas: np.ndarray, x0: int, y0: int, w: int, h: int, title: str, curves: list[tuple[str, tuple]]) -> None:
    """Draw one axes box with curves ``(name, values at CURVE_THRESHOLDS)`` in [0, 1]."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    black, grey = (0, 0, 0), (215, 215, 215)
    left, bottom = x0 + 50, y0 + h - 40
    right, top = x0 + w - 15, y0 + 35
    lo, hi = CURVE_THRESHOLDS[0], CURVE_THRESHOLDS[-1]

    def px(t: float, v: float) -> tuple[int, int]:
        return (round(left + (t - lo) / (hi - lo) * (right - left)), round(bottom - v * (bottom - top)))

    for k in range(6):  # horizontal grid at 0, 0.2, ..., 1
        v = k / 5
        cv2.line(canvas, px(lo, v), px(hi, v), grey, 1, cv2.LINE_AA)
        cv2.putText(canvas, f"{v:.1f}", (x0 + 12, px(lo, v)[1] + 5), font, 0.4, black, 1, cv2.LINE_AA)
    for t in CURVE_THRESHOLDS:
        cv2.line(canvas, px(t, 0), (px(t, 0)[0], bottom + 4), black, 1)
        cv2.putText(canvas, str(t), (px(t, 0)[0] - 4, bottom + 18), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (right, bottom), black, 1)
    cv2.putText(canvas, title, (left, y0 + 22), font, 0.55, black, 1, cv2.LINE_AA)
    cv2.putText(canvas, "threshold (px)", ((left + right) // 2 - 50, bottom + 36), font, 0.45, black, 1, cv2.LINE_AA)
    for k, (_, values) in enumerate(curves):
        color = COLORS[k % len(COLORS)]
        pts = [px(t, float(v)) for t, v in zip(CURVE_THRESHOLDS, values, strict=True)]
        cv2.polylines(canvas, [np.array(pts, np.int32)], False, color, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(canvas, p, 3, color, -1, cv2.LINE_AA)
    # Legend in a boxed area at the bottom right, drawn over the curves.
    box_top = bottom - 10 - 18 * len(curves)
    cv2.rectangle(canvas, (right - 128, box_top), (right - 6, bottom - 6), (255, 255, 255), -1)
    cv2.rectangle(canvas, (right - 128, box_top), (right - 6, bottom - 6), black, 1)
    for k, (name, _) in enumerate(curves):
        color = COLORS[k % len(COLORS)]
        ly = box_top + 16 + 18 * k
        cv2.line(canvas, (right - 120, ly - 4), (right - 100, ly - 4), color, 2, cv2.LINE_AA)
        cv2.putText(canvas, name, (right - 95, ly), font, 0.45, black, 1, cv2.LINE_AA)


def plot(report: EvalReport, scope: str = "all") -> np.ndarray:
    """A ``(440, 1000, 3)`` uint8 BGR figure: MMA and H accuracy vs threshold for ``scope``."""
    canvas = np.full((440, 1000, 3), 255, np.uint8)
    sums = [report.summary(d, scope) for d in report.descriptors]
    n = dict(report.scopes).get(scope, 0)
    _panel(canvas, 0, 0, 500, 440, f"MMA, {_scope_title(scope, n)}", [(s.descriptor, s.mma) for s in sums])
    _panel(
        canvas, 500, 0, 500, 440, "homography accuracy (corner error)", [(s.descriptor, s.accuracy_curve) for s in sums]
    )
    return canvas


def write_outputs(report: EvalReport, out_dir: Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``curves.png`` into ``out_dir`` (created)."""
    import json

    from ..plot import write_image

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md", "png": out_dir / "curves.png"}
    paths["json"].write_text(json.dumps(report.to_json(), indent=1) + "\n")
    paths["md"].write_text(markdown(report, per_pair=True) + "\n")
    if report.descriptors:
        write_image(paths["png"], plot(report))
    else:
        del paths["png"]
    return paths
