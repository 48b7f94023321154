"""Rows, metrics and rendering (text, HTML, dict) for `dsv3 parity`.

Tolerance rule for tensor rows (documented in README and `dsv3 parity --help`):
  scale   = max |reference|
  max_abs = max |dsv3 - reference|
  max_rel = max_abs / scale               (relative to the largest reference magnitude, so elements
                                            that are nearly zero do not dominate)
  cosine  = <dsv3, reference> / (|dsv3| |reference|)   (float64)
  module rows pass iff  max_abs <= MODULE_RTOL * scale + MODULE_ATOL   (float32 rounding level)
  logits pass iff       max_abs <= LOGITS_ATOL
Discrete rows: router indices equal as sets per token; teacher-forced top-1 agreement 100%;
greedy generation identical token for token.
"""
import html
import math
from dataclasses import asdict, dataclass, field

import numpy as np

MODULE_RTOL = 1e-5
MODULE_ATOL = 1e-7
LOGITS_ATOL = 1e-4

TOLERANCE_RULE = (f"tensor rows: max_abs <= {MODULE_RTOL:g} * max|ref| + {MODULE_ATOL:g}; "
                  f"logits: max_abs <= {LOGITS_ATOL:g}; max_rel = max_abs / max|ref|; "
                  "router indices: equal sets per token; top-1 agreement: 100%; generation: identical")


@dataclass
class Row:
    """One line of the parity table."""
    module: str
    passed: bool
    max_abs: float = float("nan")
    max_rel: float = float("nan")
    cosine: float = float("nan")
    tolerance: str = ""
    note: str = ""


def tensor_metrics(got, ref):
    """(max_abs, max_rel, cosine, scale) of ``got`` against ``ref`` (any shapes that match), in float64."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise ValueError(f"shape mismatch: dsv3 {got.shape} vs transformers {ref.shape}")
    if not np.all(np.isfinite(got)):
        return float("inf"), float("inf"), float("nan"), float(np.max(np.abs(ref), initial=0.0))
    d = np.abs(got - ref)
    max_abs = float(d.max(initial=0.0))
    scale = float(np.max(np.abs(ref), initial=0.0))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    g, r = got.ravel(), ref.ravel()
    den = float(np.linalg.norm(g) * np.linalg.norm(r))
    cosine = float(g @ r) / den if den > 0 else (1.0 if max_abs == 0 else 0.0)
    return max_abs, max_rel, cosine, scale


def tensor_row(module, got, ref, atol=None, note=""):
    """A row for a tensor comparison: f32-rounding tolerance relative to the reference's scale, or the
    absolute ``atol`` when given (logits)."""
    max_abs, max_rel, cosine, scale = tensor_metrics(got, ref)
    if atol is None:
        tol = MODULE_RTOL * scale + MODULE_ATOL
        tol_s = f"abs <= {tol:.2e} (1e-5*{scale:.3g})"
    else:
        tol = atol
        tol_s = f"abs <= {atol:.0e}"
    return Row(module, bool(max_abs <= tol), max_abs, max_rel, cosine, tol_s, note)


def error_row(module, exc):
    """A failing row for a probe that raised."""
    return Row(module, False, tolerance="-", note=f"error: {type(exc).__name__}: {exc}")


def _fmt(v, kind):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if kind == "cos":
        return f"{v:.9f}"
    return f"{v:.3e}"


# Translucent row backgrounds: readable under the theme's own text colour, light or dark.
_PASS_BG = "rgba(40, 167, 69, 0.16)"
_FAIL_BG = "rgba(220, 53, 69, 0.22)"

_HEAD = ("module", "max abs err", "max rel err", "cosine", "tolerance", "result")


def _cells(r):
    return (r.module, _fmt(r.max_abs, "e"), _fmt(r.max_rel, "e"), _fmt(r.cosine, "cos"), r.tolerance,
            "PASS" if r.passed else "FAIL")


def _json_float(v):
    if v is None or not math.isfinite(v):
        return None
    return float(v)


@dataclass
class ParityReport:
    """Result of :func:`dsv3.parity.run`: ``rows`` (list of :class:`Row`), ``passed``, ``info`` (config
    summary, seed, versions). ``str(report)`` is a plain-text table; in a notebook it renders as HTML."""
    rows: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    drift: list = field(default_factory=list)  # [{"layer", "isolated", "chained"}] with run(layers="all")

    @property
    def passed(self):
        """True iff there is at least one row and every row passed."""
        return bool(self.rows) and all(r.passed for r in self.rows)

    @property
    def failed(self):
        return [r for r in self.rows if not r.passed]

    def __bool__(self):
        return self.passed

    def to_dict(self):
        """JSON-ready dict: passed, info, tolerance_rule, rows (NaN/inf written as null)."""
        rows = []
        for r in self.rows:
            d = asdict(r)
            for k in ("max_abs", "max_rel", "cosine"):
                d[k] = _json_float(d[k])
            rows.append(d)
        return {"passed": self.passed, "info": dict(self.info), "tolerance_rule": TOLERANCE_RULE, "rows": rows,
                "drift": [dict(d) for d in self.drift]}

    def __str__(self):
        cells = [_HEAD] + [_cells(r) for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(_HEAD))]
        line = lambda c: "  ".join(s.ljust(w) for s, w in zip(c, widths)).rstrip()  # noqa: E731
        out = []
        if self.info:
            out.append("parity: " + ", ".join(f"{k}={v}" for k, v in self.info.items()))
        out += [line(cells[0]), line(tuple("-" * w for w in widths))]
        for r, c in zip(self.rows, cells[1:]):
            out.append(line(c))
            if r.note:
                out.append("    " + r.note)
        if self.drift:
            out += self._drift_lines()
        n_fail = len(self.failed)
        out.append(f"{len(self.rows) - n_fail}/{len(self.rows)} passed"
                   + ("" if self.passed else f", {n_fail} FAILED: " + ", ".join(r.module for r in self.failed)))
        return "\n".join(out)

    def __repr__(self):
        n_fail = len(self.failed)
        where = ", ".join(f"{k}={self.info[k]}" for k in ("model_type", "layer") if k in self.info)
        verdict = f"{len(self.rows) - n_fail}/{len(self.rows)} passed" + (f", {n_fail} FAILED" if n_fail else "")
        return f"ParityReport({verdict}{', ' + where if where else ''})"

    def _repr_html_(self):
        """Theme-safe HTML: text colour inherited from the notebook theme, pass/fail shown by a mark and a
        word (not by colour alone) on translucent backgrounds that read on light and dark themes, numbers
        never wrapped."""
        esc = html.escape
        cell = "padding:2px 8px;text-align:left;white-space:nowrap;color:inherit"
        head = "".join(f'<th style="{cell}">{esc(h)}</th>' for h in _HEAD + ("note",))
        body = []
        for r in self.rows:
            bg = _PASS_BG if r.passed else _FAIL_BG
            cells = _cells(r)[:-1] + (("\u2713 PASS" if r.passed else "\u2717 FAIL"),)
            tds = "".join(f'<td style="{cell}">{esc(c)}</td>' for c in cells)
            tds += f'<td style="padding:2px 8px;text-align:left;color:inherit">{esc(r.note)}</td>'
            body.append(f'<tr style="background:{bg};color:inherit" class="dsv3-{"pass" if r.passed else "fail"}">'
                        f"{tds}</tr>")
        info = esc(", ".join(f"{k}={v}" for k, v in self.info.items()))
        verdict = "\u2713 PASSED" if self.passed else f"\u2717 FAILED ({len(self.failed)} rows)"
        drift = self._drift_html(cell) if self.drift else ""
        return (f'<div style="color:inherit"><p><b>dsv3 parity: {verdict}</b> <small>{info}</small></p>'
                f'<table style="border-collapse:collapse;color:inherit;background:transparent">'
                f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{drift}"
                f"<p><small>{esc(TOLERANCE_RULE)}</small></p></div>")

    # ---- per-layer drift (run(layers="all")) ----
    def _drift_lines(self):
        out = ["per-layer drift (relative L2 error of the hidden state after each layer):",
               "  layer  isolated    chained"]
        for d in self.drift:
            out.append(f"  {d['layer']:>5}  {d['isolated']:.3e}  {d['chained']:.3e}")
        return out

    def _drift_html(self, cell):
        esc = html.escape
        rows = "".join(f'<tr><td style="{cell}">{d["layer"]}</td><td style="{cell}">{d["isolated"]:.3e}</td>'
                       f'<td style="{cell}">{d["chained"]:.3e}</td></tr>' for d in self.drift)
        head = "".join(f'<th style="{cell}">{esc(h)}</th>' for h in ("layer", "isolated", "chained"))
        return (f"<p><b>per-layer drift</b> <small>relative L2 error of the hidden state after each layer: "
                f"isolated (both fed transformers' input) and chained (each fed its own output)</small></p>"
                f'<table style="border-collapse:collapse;color:inherit;background:transparent"><thead><tr>{head}'
                f"</tr></thead><tbody>{rows}</tbody></table>")

    def plot_drift(self, ax=None):
        """Plot the per-layer drift (needs matplotlib: ``pip install 'dsv3[plot]'``); returns the axes."""
        if not self.drift:
            raise ValueError("this report has no per-layer drift: run dsv3.parity.run(layers='all')")
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError("plot_drift needs matplotlib: pip install 'dsv3[plot]'") from e
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.2))
        layers = [d["layer"] for d in self.drift]
        ax.semilogy(layers, [max(d["isolated"], 1e-12) for d in self.drift], "o-", label="isolated")
        ax.semilogy(layers, [max(d["chained"], 1e-12) for d in self.drift], "s--", label="chained")
        ax.axhline(MODULE_RTOL, color="gray", lw=0.8, ls=":", label=f"{MODULE_RTOL:g} (f32 tolerance)")
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("relative L2 error")
        ax.set_xticks(layers)
        ax.set_title("dsv3 vs transformers: hidden-state drift per layer")
        ax.legend(fontsize="small")
        return ax
