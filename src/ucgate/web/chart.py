"""The dashboard's chart: sign-ins and denials per hour as inline SVG (no JavaScript)."""

from __future__ import annotations

from html import escape

W, H, PAD = 720, 200, 30


def activity_svg(buckets: list[dict]) -> str:
    """Two bar series (sign-ins, denials) per hour; ``buckets`` from ``Console.activity``."""
    n = max(len(buckets), 1)
    top = max([1] + [max(b["sign_ins"], b["denials"]) for b in buckets])
    slot = (W - 2 * PAD) / n
    bar = max(slot / 2 - 1, 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" xmlns="http://www.w3.org/2000/svg" '
        f'aria-label="Sign-ins and denials per hour, last {n} hours">',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" class="axis"/>',
        f'<text x="4" y="{PAD - 8}" class="label">{top}</text>',
        f'<text x="4" y="{H - PAD}" class="label">0</text>',
    ]
    for i, b in enumerate(buckets):
        x = PAD + i * slot
        for j, (key, cls) in enumerate((("sign_ins", "ok"), ("denials", "deny"))):
            h = (H - 2 * PAD) * b[key] / top
            parts.append(
                f'<rect x="{x + j * (bar + 1):.1f}" y="{H - PAD - h:.1f}" width="{bar:.1f}" '
                f'height="{h:.1f}" class="{cls}"><title>{escape(b["hour"][11:16])} '
                f"{key.replace('_', '-')}: {b[key]}</title></rect>"
            )
        if i % 4 == 0:
            parts.append(f'<text x="{x:.1f}" y="{H - 8}" class="label">{escape(b["hour"][11:16])}</text>')
    parts.append("</svg>")
    return "".join(parts)
