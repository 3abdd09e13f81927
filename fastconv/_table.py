"""Plain-text/markdown tables and human-readable numbers for the command line and benchmark reports."""
from __future__ import annotations

from typing import Sequence


def fmt_count(n: int) -> str:
    return f"{n:,}"


def fmt_si(x: float, unit: str = "") -> str:
    """1234567 -> '1.23M'; bytes use decimal prefixes (MB = 1e6 B) like bandwidth figures do."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{prefix}{unit}"
    return f"{x:.0f}{unit}" if float(x).is_integer() else f"{x:.3g}{unit}"


def render_table(headers: Sequence[str], rows: Sequence[Sequence], markdown: bool = False) -> str:
    """A table as aligned text (numbers right-aligned) or as GitHub markdown."""
    cells = [[str(c) for c in headers]] + [[("" if c is None else str(c)) for c in r] for r in rows]
    if markdown:
        out = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in cells[1:]]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def numeric(s: str) -> bool:
        return bool(s) and (s[0].isdigit() or s[0] in "-+.") and not s.startswith("--")

    lines = []
    for k, r in enumerate(cells):
        parts = [c.rjust(w) if k and numeric(c) else c.ljust(w) for c, w in zip(r, widths)]
        lines.append("  ".join(parts).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
