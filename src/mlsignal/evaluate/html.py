"""The report's one self-contained HTML page (plots embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
tr.control td{color:#777;font-style:italic}
.banner{padding:.8em 1em;border-radius:6px;font-weight:600;margin:1em 0}
.oos_forward{background:#e3f5e1;border:1px solid #4caf50}
.oos_backward{background:#fff4d6;border:1px solid #e0a800}
.in_sample{background:#fde2e1;border:1px solid #d32f2f}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
code{background:#f4f4f4;padding:0 .2em}
"""

_BANNER = {
    "oos_forward": "Out of sample, forward: every evaluated bar comes after the training span "
    "(purged by the label horizon and the embargo).",
    "oos_backward": "Out of sample, backward: the bars come before the training span. The "
    "models never saw them as targets but learnt from later data: weaker evidence.",
    "in_sample": "IN SAMPLE: some evaluated bars lie inside the training period. These numbers "
    "are NOT an honest evaluation.",
}

_CLS_COLS = (
    "n", "base_rate", "auc", "brier", "brier_base", "brier_skill", "log_loss", "ece", "hit_rate",
)  # fmt: skip
_BT_COLS = (
    "bars", "total_return", "cagr", "sharpe", "hit_rate", "max_drawdown",
    "turnover_per_year", "exposure", "cost_paid",
)  # fmt: skip

_HOW_TO_READ = """
<ul>
<li><b>AUC</b>: chance that a random bull bar gets a higher <code>bull_prob</code> than a random
bear bar; 0.5 is no skill. Compare with the shuffled-label rows and the null band
(5&ndash;95 % of AUCs under shuffled labels): skill means above the band, p-value small.</li>
<li><b>Brier</b>: mean squared error of the probability; <b>brier_base</b> is the Brier of always
predicting this sample's base rate, <b>brier_skill</b> = 1 &minus; brier / brier_base (above 0:
better than the base rate). <b>log_loss</b> likewise; <b>ece</b>: mean |observed &minus;
predicted| over the reliability bins.</li>
<li><b>Reliability</b>: points on the diagonal are calibrated; a flat line at the base rate means
the probability carries no information (the grey control).</li>
<li><b>Backtest</b>: the same threshold rule turns raw and enhanced scores into positions;
<i>control_*</i> curves use a shuffled <code>bull_prob</code>. The enhancement helps only if
<i>enhanced</i> beats both <i>raw</i> and the control&rsquo;s Sharpe null band, after costs.</li>
<li>Labels are the training labels (triple barrier, horizon <i>h</i>): the last <i>h</i> bars of
each symbol have none and count only in the backtest.</li>
</ul>
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "&ndash;"
        return f"{int(v)}" if v.is_integer() and abs(v) >= 10 else f"{v:.4f}"
    return html.escape(str(v))


def _table(
    rows: Sequence[tuple[str, Mapping[str, Any]]],
    cols: Sequence[str],
    first: str = "",
    controls: Sequence[str] = (),
) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in (first, *cols))
    body = []
    for name, m in rows:
        cls = ' class="control"' if name in controls else ""
        cells = "".join(f"<td>{_fmt(m.get(c))}</td>" for c in cols)
        body.append(f"<tr{cls}><td>{html.escape(name)}</td>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _header(m: Mapping[str, Any]) -> str:
    sel, b, tr = m["selection"], m["bundle"], m.get("training") or {}
    status = sel["status"]
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in sel["warnings"])
    span = f"{tr.get('start', '?')} .. {tr.get('end', '?')}" if tr else "not recorded"
    rows = [(s, v) for s, v in sel["per_symbol"].items()]
    return (
        f"<h1>mlsignal evaluation: {html.escape(b['model_version'])}</h1>"
        f'<div class="banner {status}">{html.escape(_BANNER[status])}</div>'
        f"<p>bundle <code>{html.escape(b['path'])}</code>, contract "
        f"<code>{html.escape(b['contract_hash'][:16])}</code>, {html.escape(b['backend'])} on "
        f"{html.escape(b['device'])}<br>trained on <code>{html.escape(str(tr.get('data', '?')))}"
        f"</code>, samples {html.escape(span)} (label horizon {tr.get('horizon', '?')}, embargo "
        f"{tr.get('embargo', '?')}, held out {tr.get('holdout_bars', '?')} bars)<br>evaluated on "
        f"<code>{html.escape(m['data'])}</code>, {m['bars_per_year']:.1f} bars per year</p>"
        + (f"<ul>{warnings}</ul>" if warnings else "")
        + _table(
            rows,
            ("first", "last", "bars", "labelled", "in_sample_bars", "in_training_symbols"),
            "symbol",
        )
    )


def _classification(c: Mapping[str, Any], images: Mapping[str, Path]) -> str:
    rows = [(k, v) for k, v in c["pooled"].items()]
    rows += [(f"{k} (shuffled labels)", v) for k, v in c["control"]["pooled"].items()]
    controls = [r[0] for r in rows if "shuffled" in r[0]]
    per_symbol = [(f"{s}: {k}", v) for s, d in c["per_symbol"].items() for k, v in d.items()]
    null_cols = ("observed_auc", "null_mean", "null_q05", "null_q95", "p_value", "n_permutations")
    blocks = [(f"{b['first']} .. {b['last']}", b) for b in c["blocks"]]
    rel = [(f"{b['lo']:.3f} .. {b['hi']:.3f}", b) for b in c["reliability"]["bull_prob"]]
    return (
        "<h2>Probabilities against labels</h2><h3>Pooled (control: labels shuffled)</h3>"
        + _table(rows, _CLS_COLS, "model", controls)
        + "<h3>Per symbol</h3>"
        + _table(per_symbol, _CLS_COLS, "symbol: model")
        + "<h3>AUC against the shuffled-label null</h3>"
        + _table(list(c["auc_null"].items()), null_cols, "model")
        + _img(images["auc_null"], "AUC null distribution")
        + "<h3>bull_prob over time (equal-count blocks)</h3>"
        + _table(blocks, ("n", "base_rate", "auc", "brier", "brier_skill", "log_loss"), "period")
        + "<h3>Reliability</h3>"
        + _img(images["reliability"], "reliability diagram")
        + _table(rel, ("mean_pred", "observed", "count"), "bull_prob bin")
        + "<h3>bull_prob histogram</h3>"
        + _img(images["histogram"], "bull_prob histogram")
    )


def _backtest(bt: Mapping[str, Any], images: Mapping[str, Path]) -> str:
    controls = ("control_enhanced", "control_kelly")
    per_symbol = [(f"{s}: {k}", v) for s, d in bt["per_symbol"].items() for k, v in d.items()]
    null = bt["sharpe_null"]
    null_rows = [(k, v) for k, v in null.items() if isinstance(v, dict)]
    null_cols = ("observed_sharpe", "null_mean", "null_q05", "null_q95", "p_value")
    return (
        "<h2>Backtest: raw rule signals against enhanced signals</h2>"
        f"<p>{html.escape(bt['rule'])}.</p>"
        + _table(list(bt["pooled"].items()), _BT_COLS, "pooled", controls)
        + _img(images["equity"], "equity curves")
        + f"<h3>Sharpe against {null.get('n_permutations', 0)} shuffles of bull_prob</h3>"
        + _table(null_rows, null_cols, "strategy")
        + "<h3>Per symbol</h3>"
        + _table(
            per_symbol,
            _BT_COLS,
            "symbol: strategy",
            [r[0] for r in per_symbol if "control" in r[0]],
        )
    )


def render_html(metrics: Mapping[str, Any], images: Mapping[str, Path]) -> str:
    """The whole page: header and honesty banner, how to read it, metrics, plots, backtest."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>mlsignal evaluation</title><style>{_CSS}</style></head><body>"
        + _header(metrics)
        + "<h2>How to read this report</h2>"
        + _HOW_TO_READ
        + _classification(metrics["classification"], images)
        + _backtest(metrics["backtest"], images)
        + f"<p><small>written in {metrics.get('seconds', 0):.1f} s; per-bar data in "
        "<code>signals.csv</code>, every number in <code>metrics.json</code>.</small></p>"
        + "</body></html>\n"
    )
