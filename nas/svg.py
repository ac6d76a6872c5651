"""Small SVG charts for the self-contained HTML report (no JavaScript needed to draw them).

A :class:`Plot` holds series of points (scatter, line or step) on linear or log axes and renders one
``<svg>`` element. Every marker of a trial carries ``data-t="<trial number>"`` so the report's
script can show a tooltip and highlight the same trial in every plot; a series carries
``data-series`` so its legend entry can hide it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

MARKERS = ("circle", "cross", "diamond", "square")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (1, 2, 2.5, 5 x 10^k steps) covering [lo, hi]."""
    if not hi > lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    count = math.floor((hi - first) / step + 1e-9) + 1
    return [round(first + i * step, 12) for i in range(count)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten in [lo, hi]; with fewer than two of them, the 2x and 5x values as well."""
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    decades = [10.0**k for k in range(k0, k1 + 1) if lo <= 10.0**k <= hi]
    if len(decades) >= 2:
        return decades
    return [m * 10.0**k for k in range(k0, k1 + 1) for m in (1, 2, 5) if lo <= m * 10.0**k <= hi]


@dataclass
class Scale:
    """Maps data values in [lo, hi] to pixels in [a, b] (log10 when ``log``)."""

    lo: float
    hi: float
    a: float
    b: float
    log: bool = False

    @classmethod
    def fit(cls, values: Sequence[float], a: float, b: float, log: bool) -> Scale:
        vals = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
        if not vals:
            return cls(0.0, 1.0, a, b, False)
        lo, hi = min(vals), max(vals)
        if log:
            llo, lhi = math.log10(lo), math.log10(hi)
            pad = 0.05 * (lhi - llo) or 0.5
            return cls(10 ** (llo - pad), 10 ** (lhi + pad), a, b, True)
        pad = 0.05 * (hi - lo) or 0.5 * (abs(lo) or 1.0)
        return cls(lo - pad, hi + pad, a, b, False)

    def __call__(self, v: float) -> float:
        if self.log:
            t = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            t = (v - self.lo) / (self.hi - self.lo)
        return self.a + t * (self.b - self.a)

    def ticks(self) -> list[float]:
        return log_ticks(self.lo, self.hi) if self.log else nice_ticks(self.lo, self.hi)


@dataclass
class Series:
    label: str
    xs: list[float]
    ys: list[float]
    color: str
    kind: str = "scatter"  # scatter | line | step
    marker: str = "circle"
    size: float = 4.0
    trials: list[int] | None = None  # trial number of each point (tooltips, linked highlight)
    key: str = ""  # data-series value (legend toggling); defaults to the label


@dataclass
class Plot:
    """One chart: ``add()`` series, then ``svg()``."""

    title: str
    xlabel: str
    ylabel: str
    xlog: bool = False
    ylog: bool = False
    width: int = 470
    height: int = 350
    series: list[Series] = field(default_factory=list)

    def add(self, label: str, xs: Sequence[float], ys: Sequence[float], **kw: object) -> Plot:
        self.series.append(Series(label, list(xs), list(ys), **kw))  # type: ignore[arg-type]
        return self

    def svg(self, css_class: str = "plot") -> str:
        left, right, top, bottom = 64, 14, 30, 78
        xs = [x for s in self.series for x in s.xs]
        ys = [y for s in self.series for y in s.ys]
        sx = Scale.fit(xs, left, self.width - right, self.xlog)
        sy = Scale.fit(ys, self.height - bottom, top, self.ylog)
        out = [
            f'<svg class="{css_class}" xmlns="http://www.w3.org/2000/svg" '
            f'viewBox="0 0 {self.width} {self.height}" width="{self.width}" '
            f'height="{self.height}" role="img" aria-label="{escape(self.title)}">',
            f'<text class="title" x="{left}" y="18">{escape(self.title)}</text>',
            f'<rect class="frame" x="{left}" y="{top}" width="{self.width - left - right}" '
            f'height="{self.height - top - bottom}"/>',
        ]
        out += self._axes(sx, sy, left, top, bottom)
        for s in self.series:
            out.append(self._series(s, sx, sy))
        out.append(self._legend(left))
        out.append("</svg>")
        return "".join(out)

    def _axes(self, sx: Scale, sy: Scale, left: int, top: int, bottom: int) -> list[str]:
        out = []
        y0, x1 = self.height - bottom, self.width - 14
        for t in sx.ticks():
            x = sx(t)
            out.append(
                f'<line class="grid" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{y0}"/>'
                f'<text class="tick" x="{x:.1f}" y="{y0 + 14}" text-anchor="middle">'
                f"{fmt_tick(t)}</text>"
            )
        for t in sy.ticks():
            y = sy(t)
            out.append(
                f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}"/>'
                f'<text class="tick" x="{left - 5}" y="{y + 3.5:.1f}" text-anchor="end">'
                f"{fmt_tick(t)}</text>"
            )
        xl = escape(self.xlabel + (" (log)" if sx.log else ""))
        yl = escape(self.ylabel + (" (log)" if sy.log else ""))
        mid_y = (top + y0) / 2
        out.append(
            f'<text class="label" x="{(left + x1) / 2:.1f}" y="{y0 + 32}" '
            f'text-anchor="middle">{xl}</text>'
            f'<text class="label" transform="translate(14 {mid_y:.1f}) rotate(-90)" '
            f'text-anchor="middle">{yl}</text>'
        )
        return out

    def _series(self, s: Series, sx: Scale, sy: Scale) -> str:
        key = escape(s.key or s.label)
        pts = [
            (sx(x), sy(y), (s.trials[i] if s.trials else None))
            for i, (x, y) in enumerate(zip(s.xs, s.ys, strict=True))
            if math.isfinite(x)
            and math.isfinite(y)
            and (x > 0 or not sx.log)
            and (y > 0 or not sy.log)
        ]
        out = [f'<g class="series" data-series="{key}">']
        if s.kind in ("line", "step") and len(pts) > 1:
            path = [f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"]
            for x, y, _ in pts[1:]:
                path.append(f"H{x:.1f}V{y:.1f}" if s.kind == "step" else f"L{x:.1f},{y:.1f}")
            out.append(
                f'<path d="{"".join(path)}" fill="none" stroke="{s.color}" stroke-width="1.6"/>'
            )
        if s.kind != "step" or len(pts) == 1:
            out += [_marker(s.marker, x, y, s.size, s.color, t) for x, y, t in pts]
        out.append("</g>")
        return "".join(out)

    def _legend(self, left: int) -> str:
        out, x = ['<g class="legend">'], float(left)
        y = self.height - 22
        for s in self.series:
            label = f"{s.label} ({len(s.xs)})" if s.kind == "scatter" else s.label
            if len(label) > 44:
                label = "\u2026" + label[-43:]
            w = 22 + 6.2 * len(label)
            if x > left and x + w > self.width:
                x, y = float(left), y + 15
            out.append(
                f'<g class="legend-item" data-series="{escape(s.key or s.label)}">'
                + _marker(s.marker if s.kind != "step" else "square", x + 5, y, 4.5, s.color, None)
                + f'<text x="{x + 13:.1f}" y="{y + 4:.1f}">{escape(label)}</text></g>'
            )
            x += w
        out.append("</g>")
        return "".join(out)


def fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:g}"


def _marker(kind: str, x: float, y: float, r: float, color: str, trial: int | None) -> str:
    data = f' class="pt" data-t="{trial}"' if trial is not None else ""
    if kind == "cross":
        a, b, c, e = x - r, x + r, y - r, y + r
        d = f"M{a:.1f},{c:.1f}L{b:.1f},{e:.1f}M{a:.1f},{e:.1f}L{b:.1f},{c:.1f}"
        return f'<path{data} d="{d}" stroke="{color}" stroke-width="2" fill="none"/>'
    if kind == "diamond":
        r *= 1.4
        d = f"M{x:.1f},{y - r:.1f}L{x + r:.1f},{y:.1f}L{x:.1f},{y + r:.1f}L{x - r:.1f},{y:.1f}Z"
        return f'<path{data} d="{d}" fill="{color}"/>'
    if kind == "square":
        return (
            f'<rect{data} x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.1f}" '
            f'height="{2 * r:.1f}" fill="{color}"/>'
        )
    return f'<circle{data} cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{color}"/>'
