"""The benchmark's report: results.csv, results.md, machine.json and the trade-off chart, from its rows.

``training.benchmark`` times the operating points and hands over one row (a dict with the
``COLUMNS`` keys) per method and operating point; everything here only reads rows, so it can be
rendered again from saved ones. The papers' headline figures are data here too (``PAPER_CLAIMS``),
added as rows marked quoted, never mixed up with what was measured.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from core.methods import BASELINE, METHODS, Method
from core.methods.dact import DACT
from core.methods.deebert import DeeBERT
from core.methods.dpbert import DPBERT
from core.methods.pabee import PABEE
from training.calibration import KEEP

OVERHEAD_TARGET = 0.95  # measured / expected speed-up at batch size 1
BATCHED_TARGET = 0.8  # batched speed-up / batched expected speed-up
KEEP_TARGET = 100 * KEEP  # % of the full model's metric an operating point must keep ...
SPEEDUP_AIM = 1.5  # ... and the measured speed-up we aim for at the fastest such point

QUOTED = "quoted (paper, not measured)"
MEASURED = "measured"
COLUMNS = [
    "source",
    "task",
    "method",
    "threshold",
    "operating_point",
    "metric_name",
    "metric",
    "metric_pct_of_full",
    "avg_layers",
    "expected_speedup",
    "measured_speedup",
    "overhead_ratio",
    "p50_ms",
    "p95_ms",
    "batch_size",
    "throughput_per_s",
    "batched_expected_speedup",
    "batched_speedup",
    "batched_overhead_ratio",
    "dev_avg_layers",
    "dev_examples",
    "timed_inputs",
    "repeats",
    "quoted_speedup",
    "note",
]
COUNT_COLUMNS = ("batch_size", "dev_examples", "timed_inputs", "repeats")


@dataclass(frozen=True)
class PaperClaim:
    """A method's headline result as its paper states it (not measured here)."""

    method: type[Method]
    claim: str
    metric_pct_of_full: float | None = None
    speedup: float | None = None

    def row(self) -> dict:
        return {
            "source": QUOTED,
            "task": "GLUE",
            "method": self.method.name,
            "operating_point": "paper",
            "metric_pct_of_full": self.metric_pct_of_full,
            "quoted_speedup": self.speedup,
            "note": f"{self.method.paper}: {self.claim}",
        }


PAPER_CLAIMS = (
    PaperClaim(DeeBERT, "up to ~40% less inference time with minimal quality loss (BERT-base, GLUE)"),
    PaperClaim(DACT, "better than DeeBERT and PABEE at low computation (BERT-base, GLUE)"),
    PaperClaim(DPBERT, "98% of BERT-base's GLUE score at 1.34x speed-up", metric_pct_of_full=98.0, speedup=1.34),
    PaperClaim(
        PABEE,
        '"BERT Loses Patience": fewer layers per input with accuracy and robustness improved rather than lost, '
        "a better accuracy-speed trade-off than earlier early-exit methods (ALBERT, GLUE)",
    ),
)


def reference_rows() -> list[dict]:
    """The papers' claims as rows, in the methods' display order."""
    order = list(METHODS)
    return [claim.row() for claim in sorted(PAPER_CLAIMS, key=lambda claim: order.index(claim.method.name))]


def verdict(value: float, target: float) -> str:
    return "met" if value >= target else f"missed by {target - value:.3f}"


def target_summary(rows: list[dict]) -> list[str]:
    """Each issue-5 target per measured method: met, or by how much it was missed."""
    measured = [row for row in rows if row["source"] == MEASURED]
    lines = []
    for row in (row for row in measured if row["operating_point"] == "shipped" and row["method"] != BASELINE):
        name = row["method"] if row["threshold"] is None else f"{row['method']} at threshold {row['threshold']:g}"
        overhead = row.get("overhead_ratio")
        if overhead is not None:
            lines.append(f"- {name}: overhead ratio at batch 1 = {overhead:.3f} (target >= {OVERHEAD_TARGET}): {verdict(overhead, OVERHEAD_TARGET)}")
        batched = row.get("batched_overhead_ratio")
        if batched is not None:
            lines.append(
                f"- {name}: batched speed-up at batch {row['batch_size']} {row['batched_speedup']:.2f}x against an expected "
                f"{row['batched_expected_speedup']:.2f}x, ratio {batched:.3f} (target >= {BATCHED_TARGET}): {verdict(batched, BATCHED_TARGET)}"
            )
    speed_column = "measured_speedup" if any(row.get("measured_speedup") is not None for row in measured) else "batched_speedup"
    for method in dict.fromkeys(row["method"] for row in measured if row["method"] != BASELINE):
        own = [row for row in measured if row["method"] == method]
        keeping = [row for row in own if row["metric_pct_of_full"] is not None and row["metric_pct_of_full"] >= KEEP_TARGET]
        if not keeping:
            best = max((row["metric_pct_of_full"] for row in own if row["metric_pct_of_full"] is not None), default=None)
            kept = "the full model's metric is 0 or undefined" if best is None else f"the best keeps {best:.1f}%"
            lines.append(f"- {method}: no operating point keeps >= {KEEP_TARGET:g}% of the full metric ({kept}): missed")
            continue
        fastest = max(keeping, key=lambda row: row[speed_column])
        threshold = "" if fastest["threshold"] is None else f" at threshold {fastest['threshold']:g}"
        lines.append(
            f"- {method}: fastest point keeping >= {KEEP_TARGET:g}% of full{threshold} ({fastest['metric_pct_of_full']:.1f}%): "
            f"{speed_column.replace('_speedup', ' speed-up')} {fastest[speed_column]:.2f}x (aim >= {SPEEDUP_AIM}x): {verdict(fastest[speed_column], SPEEDUP_AIM)}"
        )
    return lines


def cell(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def machine_lines(machine: dict) -> list[str]:
    return [f"- {key}: {value}" for key, value in machine.items()]


def markdown(task: str, rows: list[dict], machine: dict, targets: list[str], profiled: bool) -> str:
    measured = [row for row in rows if row["source"] == MEASURED]
    quoted = [row for row in rows if row["source"] == QUOTED]
    lines = [
        f"# Benchmark: {task}",
        "",
        f"{measured[0]['timed_inputs']} dev inputs timed ({measured[0]['repeats']} repeats, interleaved), metric on {measured[0]['dev_examples']} dev inputs.",
        "Speed-ups are against the full model on the same inputs in the same run; overhead = measured / expected.",
        "",
        "| method | threshold | point | metric | % of full | avg layers | expected | measured | overhead | p50 ms | p95 ms "
        "| batch | throughput/s | batched expected | batched | batched overhead |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in measured:
        lines.append(
            f"| {row['method']} | {cell(row['threshold'], 2)} | {row['operating_point']} | {row['metric_name']} {cell(row['metric'], 4)} "
            f"| {cell(row['metric_pct_of_full'], 1)} | {cell(row.get('avg_layers'), 2)} | {cell(row.get('expected_speedup'), 2)} "
            f"| {cell(row.get('measured_speedup'), 2)} | {cell(row.get('overhead_ratio'))} | {cell(row.get('p50_ms'), 2)} "
            f"| {cell(row.get('p95_ms'), 2)} | {cell(row.get('batch_size'))} | {cell(row.get('throughput_per_s'), 1)} "
            f"| {cell(row.get('batched_expected_speedup'), 2)} | {cell(row.get('batched_speedup'), 2)} | {cell(row.get('batched_overhead_ratio'))} |"
        )
    lines += [
        "",
        "## Quoted from the papers (not measured here; the papers' own 12-layer models)",
        "",
        "| source | method | % of full | speed-up | claim |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in quoted:
        lines.append(f"| {row['source']} | {row['method']} | {cell(row.get('metric_pct_of_full'), 1)} | {cell(row.get('quoted_speedup'), 2)} | {row['note']} |")
    lines += ["", "## Targets (issue 5)", "", *targets, "", "## Machine", "", *machine_lines(machine)]
    if profiled:
        lines += ["", "Where the time goes: profile.txt (torch.profiler, top operators per method)."]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    import pandas as pd

    pd.DataFrame(rows, columns=COLUMNS).astype(dict.fromkeys(COUNT_COLUMNS, "Int64")).to_csv(path, index=False)


def write_chart(rows: list[dict], out: Path) -> None:
    """Metric against measured speed-up, one line per method, the full model as a point."""
    import altair as alt
    import pandas as pd

    measured = pd.DataFrame([row for row in rows if row["source"] == MEASURED])
    speed = "measured_speedup" if measured.get("measured_speedup") is not None and measured["measured_speedup"].notna().any() else "batched_speedup"
    title = "measured speed-up over the full model" + (" (batch 1)" if speed == "measured_speedup" else f" (batch {int(measured['batch_size'].iloc[0])})")
    points = measured.dropna(subset=["metric", speed]).assign(threshold=lambda frame: frame["threshold"].astype(float))
    expected, layers = ("expected_speedup", "avg_layers") if speed == "measured_speedup" else ("batched_expected_speedup", "dev_avg_layers")
    base = alt.Chart(points).encode(
        x=alt.X(f"{speed}:Q", title=title, scale=alt.Scale(zero=False)),
        y=alt.Y("metric:Q", title=str(measured["metric_name"].iloc[0]), scale=alt.Scale(zero=False)),
        color=alt.Color("method:N", sort=list(METHODS)),
        tooltip=["method", "threshold", "operating_point", "metric", "metric_pct_of_full", speed, expected, layers],
    )
    curves = base.mark_line(point=True).encode(order="threshold:Q")
    shipped = base.transform_filter(alt.datum.operating_point == "shipped").mark_point(size=160, filled=True, shape="diamond")
    layers = [curves, shipped]
    full_metric = float(measured.loc[measured["method"] == BASELINE, "metric"].iloc[0])
    if math.isfinite(full_metric) and full_metric > 0:
        keep_line = pd.DataFrame({"metric": [KEEP_TARGET / 100 * full_metric], "label": [f"{KEEP_TARGET:g}% of full"]})
        layers.append(alt.Chart(keep_line).mark_rule(strokeDash=[4, 4], color="gray").encode(y="metric:Q", tooltip=["label"]))
    chart = alt.layer(*layers).properties(
        title=f"{measured['task'].iloc[0]}: {measured['metric_name'].iloc[0]} vs measured speed-up (diamonds: shipped points; dashed: {KEEP_TARGET:g}% of full)",
        width=520,
        height=320,
    )
    chart.save(str(out / "tradeoff.html"))
    chart.save(str(out / "tradeoff.png"))


def write_report(out: Path, task: str, measured: list[dict], machine: dict, profiled: bool) -> str:
    """results.csv (measured rows, then the quoted ones), results.md, machine.json and the chart; returns the markdown."""
    targets = target_summary(measured)
    rows = measured + reference_rows()
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "results.csv")
    table = markdown(task, rows, machine, targets, profiled)
    (out / "results.md").write_text(table)
    (out / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
    write_chart(rows, out)
    return table
