"""Notebook display: theme-safe HTML for dsv3's objects and summaries.

Every table inherits the notebook's text colour (no hard-coded foreground or pale background, so it
reads in light and dark themes), keeps numbers on one line, and marks pass/fail with a symbol and a word
rather than colour alone. ``Summary`` is a dict (so code keeps indexing it) that renders as a table.
"""
import html

CELL = "padding:2px 8px;text-align:left;vertical-align:top;white-space:nowrap;color:inherit"
TABLE = "border-collapse:collapse;color:inherit;background:transparent"


def _value_html(v):
    if isinstance(v, dict):
        return html_table(v.items())
    if isinstance(v, bool):
        return "\u2713 yes" if v else "\u2717 no"
    if isinstance(v, float):
        return html.escape(f"{v:.6g}")
    if isinstance(v, (list, tuple)) and len(v) > 12:
        v = list(v[:12]) + [f"... ({len(v)} in all)"]
    return html.escape(str(v))


def html_table(items, headers=None, title=None):
    """HTML table of ``items`` (pairs key -> value, or rows of cells); nested dicts become nested tables."""
    rows = []
    for it in items:
        cells = it if isinstance(it, (list, tuple)) else (it,)
        rows.append("<tr>" + "".join(
            f'<td style="{CELL}">{_value_html(c) if i else "<b>" + html.escape(str(c)) + "</b>"}</td>'
            for i, c in enumerate(cells)) + "</tr>")
    head = ("<thead><tr>" + "".join(f'<th style="{CELL}">{html.escape(h)}</th>' for h in headers)
            + "</tr></thead>") if headers else ""
    cap = f'<p style="color:inherit"><b>{html.escape(title)}</b></p>' if title else ""
    return f'<div style="color:inherit">{cap}<table style="{TABLE}">{head}<tbody>{"".join(rows)}</tbody></table></div>'


class Summary(dict):
    """A dict that renders as a table in notebooks (``_repr_html_``); plain ``repr`` is the dict's."""

    def __init__(self, data=(), title=None):
        super().__init__(data)
        self.title = title

    def _repr_html_(self):
        return html_table(self.items(), title=self.title)


def human_bytes(n):
    """``1536`` -> ``'1.5 KiB'``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


class CheckpointDisplay:
    """Short ``repr`` and a summary table in notebooks for checkpoint readers (``.path``, ``.layout``,
    ``.config``, ``summary()``)."""

    def __repr__(self):
        return f"<{type(self).__name__} {self.path!r} layout={self.layout} {self.config!r}>"

    def _repr_html_(self):
        return self.summary()._repr_html_()


def interactive():
    """True in a notebook (an IPython kernel is loaded) or when stderr is a terminal."""
    import sys
    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress(iterable=None, total=None, desc=None, enabled=None, **kw):
    """A ``tqdm.auto`` bar (a widget in notebooks, text on a terminal). ``enabled``: True, False, or
    None (default: shown only when :func:`interactive`, so scripts and logs stay quiet)."""
    from tqdm.auto import tqdm
    if enabled is None:
        enabled = interactive()
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, **kw)
