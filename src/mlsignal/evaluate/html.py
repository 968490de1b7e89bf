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
.verdict{padding:1em 1.2em;border-radius:6px;margin:1em 0;border:2px solid}
.verdict h2{margin:.1em 0 .4em}
.v-skill{background:#eef6ff;border-color:#1f77b4}
.v-none{background:#f4f4f4;border-color:#777}
.v-worse{background:#fde2e1;border-color:#d32f2f}
"""

_VERDICT_CLASS = {
    "skill": "v-skill",
    "no skill detected": "v-none",
    "worse than base rate": "v-worse",
}

_BANNER = {
    "oos_forward": "Out of sample, forward: every evaluated bar comes after the training span "
    "(purged by the label horizon and the embargo).",
    "oos_backward": "Out of sample, backward: the bars come before the training span. The "
    "models never saw them as targets but learnt from later data: weaker evidence.",
    "in_sample": "IN SAMPLE: some evaluated bars lie inside the training period. These numbers "
    "are NOT an honest evaluation.",
}

_CLS_COLS = (
    "n", "base_rate", "auc", "ic", "brier", "brier_base", "brier_skill", "log_loss", "ece",
    "hit_rate",
)  # fmt: skip
_SYMBOL_COLS = (
    "first", "last", "bars", "labelled", "in_sample_bars", "in_training_symbols", "bars_per_year",
)  # fmt: skip
_NULL_COLS = ("observed", "null_mean", "null_q05", "null_q95", "p_value")
_FUSION_COLS = (
    "bars", "mean_abs_delta_bs", "mean_abs_delta_ss", "kelly_flat", "kelly_long", "kelly_short",
    "mean_bull_prob", "base_rate",
)  # fmt: skip
_BT_COLS = (
    "bars", "total_return", "cagr", "sharpe", "hit_rate", "max_drawdown",
    "turnover_per_year", "exposure", "cost_paid",
)  # fmt: skip

_HOW_TO_READ = """
<ul>
<li><b>AUC</b>: chance that a random bull bar gets a higher <code>bull_prob</code> than a random
bear bar; 0.5 is no skill. <b>IC</b>: rank correlation of the probability with the forward
return over the label horizon; 0 is no skill. Compare both with the shuffled-label rows and the
null band (5&ndash;95 % of the values when the labels and returns are moved in whole blocks of
bars, which keeps overlapping labels together; shuffling single bars would give a band too
narrow). Skill means above the band with a small p-value; a value inside the band is what
noise produces, however far from 0.5 it looks.</li>
<li><b>Baselines</b>: <i>logistic</i> and <i>boosting</i> are plain models fitted on the same
features and the bundle&rsquo;s training data. If they do as well as <code>bull_prob</code>, the
deep models add nothing.</li>
<li><b>Brier</b>: mean squared error of the probability; <b>brier_base</b> is the Brier of always
predicting this sample's base rate, <b>brier_skill</b> = 1 &minus; brier / brier_base (above 0:
better than the base rate). <b>log_loss</b> likewise; <b>ece</b>: mean |observed &minus;
predicted| over the reliability bins.</li>
<li><b>Reliability</b>: points on the diagonal are calibrated; a flat line at the base rate means
the probability carries no information (the grey control).</li>
<li><b>Backtest</b>: the same threshold rule turns raw and enhanced scores into positions;
<i>control_*</i> curves use <code>bull_prob</code> moved in blocks of bars. The enhancement
helps only if <i>enhanced</i> beats both <i>raw</i> and the control&rsquo;s Sharpe null band,
after costs; even then one period is thin evidence. Each symbol is annualised by its own bar
interval.</li>
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
        f'<div class="banner {status}">{html.escape(_BANNER[status])}</div>'
        f"<p>bundle <code>{html.escape(b['path'])}</code>, contract "
        f"<code>{html.escape(b['contract_hash'][:16])}</code>, {html.escape(b['backend'])} on "
        f"{html.escape(b['device'])}<br>trained on <code>{html.escape(str(tr.get('data', '?')))}"
        f"</code>, samples {html.escape(span)} (label horizon {tr.get('horizon', '?')}, embargo "
        f"{tr.get('embargo', '?')}, held out {tr.get('holdout_bars', '?')} bars)<br>evaluated on "
        f"<code>{html.escape(m['data'])}</code>; pooled timeline {m['bars_per_year']:.1f} bars "
        "per year, each symbol annualised by its own (below)</p>"
        + (f"<ul>{warnings}</ul>" if warnings else "")
        + _table(
            rows,
            _SYMBOL_COLS,
            "symbol",
        )
    )


def _verdict(v: Mapping[str, Any]) -> str:
    caveats = "".join(f"<li>{html.escape(c)}</li>" for c in v["caveats"])
    return (
        f'<div class="verdict {_VERDICT_CLASS[v["verdict"]]}">'
        f"<h2>Verdict: {html.escape(v['verdict'])}</h2>"
        f"<p>{html.escape(v['plain'])}</p>"
        + (f"<p><b>Caveats:</b></p><ul>{caveats}</ul>" if caveats else "")
        + f"<p><small>{html.escape(v['model'])}, pooled: {html.escape(v['why'])}. Null: "
        f"{html.escape(v['method'])}.</small></p></div>"
    )


def _fusion(f: Mapping[str, Any], verdict: str) -> str:
    pooled = f["pooled"]
    rows = [("pooled", pooled), *f["per_symbol"].items()]
    moved = pooled["mean_abs_delta_bs"] + pooled["mean_abs_delta_ss"]
    note = ""
    if verdict != "skill" and (moved > 0.5 or pooled["kelly_flat"] < 0.95):
        note = (
            f"<p><b>No skill was detected, yet the model moved your scores by "
            f"{pooled['mean_abs_delta_bs']:.2f} (bs) and {pooled['mean_abs_delta_ss']:.2f} (ss) "
            f"points a bar on average and Kelly sized a position on "
            f"{1 - pooled['kelly_flat']:.0%} of bars: those moves are noise (or a constant tilt), "
            "not an edge.</b></p>"
        )
    return (
        "<h2>How much the model moved your scores</h2>"
        "<p>Mean |enhanced &minus; raw| in score points per bar, the share of bars Kelly sized "
        "flat, long or short, and the mean <code>bull_prob</code> beside the training base rate "
        f"the fusion is centred on ({f['base_rate']:.4f}). A model without information leaves "
        "your scores where the rules put them and keeps Kelly flat; a mean bull_prob away from "
        "the base rate on every bar is a constant tilt, not a signal.</p>"
        + note
        + _table(rows, _FUSION_COLS, "")
    )


def _nulls(n: Mapping[str, Any]) -> str:
    return (
        f"<h3>Against the no-skill null ({n['n_permutations']} block permutations)</h3>"
        f"<p>{html.escape(n['method'])}. One-sided p-value: the share of shuffles at least as "
        "good as the observed value. The p-values are per row and not corrected for testing "
        f"{len(n['auc'])} outputs at once: with that many tests, one p-value below 0.05 by chance "
        "alone is common. The verdict rests on bull_prob only.</p><h4>AUC</h4>"
        + _table(list(n["auc"].items()), _NULL_COLS, "model")
        + "<h4>IC (rank correlation with the forward return)</h4>"
        + _table(list(n["ic"].items()), _NULL_COLS, "model")
    )


def _baselines_line(b: Mapping[str, Any]) -> str:
    if not b.get("fitted"):
        return f"<p>{html.escape(b.get('reason', 'baselines left out'))}.</p>"
    return (
        f"<p>Baselines: {html.escape(b['what'])} ({b['samples']} samples, {html.escape(b['first'])}"
        f" .. {html.escape(b['last'])}).</p>"
    )


def _classification(c: Mapping[str, Any], images: Mapping[str, Path], base: Mapping) -> str:
    rows = [(k, v) for k, v in c["pooled"].items()]
    rows += [(f"{k} (shuffled labels)", v) for k, v in c["control"]["pooled"].items()]
    controls = [r[0] for r in rows if "shuffled" in r[0]]
    per_symbol = [(f"{s}: {k}", v) for s, d in c["per_symbol"].items() for k, v in d.items()]
    blocks = [(f"{b['first']} .. {b['last']}", b) for b in c["blocks"]]
    rel = [(f"{b['lo']:.3f} .. {b['hi']:.3f}", b) for b in c["reliability"]["bull_prob"]]
    return (
        "<h2>Probabilities against labels</h2>"
        + _baselines_line(base)
        + f"<h3>Pooled (control: {html.escape(c['control']['what'])})</h3>"
        + _table(rows, _CLS_COLS, "model", controls)
        + "<h3>Per symbol</h3>"
        + _table(per_symbol, _CLS_COLS, "symbol: model")
        + _nulls(c["nulls"])
        + _img(images["auc_null"], "AUC block permutation null")
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
        + f"<p>{html.escape(null.get('method', ''))}; pooled, annualised by the pooled "
        "timeline.</p>"
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
    """The whole page: the verdict first, then the honesty banner and header, how far the
    model moved the scores, how to read it, metrics, plots, backtest."""
    verdict = metrics["verdict"]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>mlsignal evaluation</title><style>{_CSS}</style></head><body>"
        f"<h1>mlsignal evaluation: {html.escape(metrics['bundle']['model_version'])}</h1>"
        + _verdict(verdict)
        + _header(metrics)
        + _fusion(metrics["fusion_effect"], verdict["verdict"])
        + "<h2>How to read this report</h2>"
        + _HOW_TO_READ
        + _classification(metrics["classification"], images, metrics["baselines"])
        + _backtest(metrics["backtest"], images)
        + f"<p><small>written in {metrics.get('seconds', 0):.1f} s; per-bar data in "
        "<code>signals.csv</code>, every number in <code>metrics.json</code>.</small></p>"
        + "</body></html>\n"
    )
