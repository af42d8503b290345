"""The benchmark's report: results.csv, results.md, machine.json and the trade-off chart, from its rows.

``training.benchmark`` times the operating points and hands over one row (a dict with the
``COLUMNS`` keys) per method and operating point; everything here only reads rows, so it can be
rendered again from saved ones. The papers' headline figures (each method's ``paper_claim``) are
added as rows marked quoted, never mixed up with what was measured.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from core.csvsafe import write_csv
from core.errors import UserError, command_line
from core.methods import BASELINE, METHODS
from core.precision import FP32, INT8, ONNX_FP32, ONNX_INT8
from training.targets import (
    BATCHED_OVERHEAD_RATIO,
    BATCHED_VS_ORT_INT8,
    HEADLINE_VS_FP32,
    HEADLINE_VS_ORT_INT8,
    KEEP,
    MAX_NO_LAYER_SHARE,
    MIN_EXPECTED_SPEEDUP,
    RUNTIME_PARITY,
    overhead_target,
)

KEEP_TARGET = 100 * KEEP  # % of the fp32 full model's metric an operating point must keep

QUOTED = "quoted (paper, not measured)"
MEASURED = "measured"
ENGINE = "engine"  # this project's batched layer loop
ONNXRUNTIME = "onnxruntime"  # the full model exported to ONNX Runtime (a reference row)
COLUMNS = [
    "source",
    "task",
    "method",
    "precision",
    "runtime",
    "threshold",
    "operating_point",
    "metric_name",
    "metric",
    "compared_metrics",
    "metric_pct_of_full",
    "agreement",
    "no_layer_share",
    "avg_layers",
    "expected_speedup",
    "measured_speedup",
    "speedup_vs_int8_full",
    "speedup_vs_full_same_precision",
    "overhead_ratio",
    "p50_ms",
    "p95_ms",
    "batch_size",
    "throughput_per_s",
    "batched_expected_speedup",
    "batched_speedup",
    "batched_speedup_vs_int8_full",
    "batched_overhead_ratio",
    "e2e_p50_ms",
    "e2e_speedup",
    "e2e_speedup_vs_ort_int8",
    "dev_avg_layers",
    "dev_examples",
    "timed_inputs",
    "batched_inputs",
    "repeats",
    "quoted_speedup",
    "note",
]
COUNT_COLUMNS = ("batch_size", "dev_examples", "timed_inputs", "batched_inputs", "repeats")


def reference_rows() -> list[dict]:
    """The papers' headline claims (``Method.paper_claim``) as rows marked quoted, in the methods' display order."""
    return [
        {
            "source": QUOTED,
            "task": "GLUE",
            "method": cls.name,
            "operating_point": "paper",
            "metric_pct_of_full": cls.paper_claim.metric_pct_of_full,
            "quoted_speedup": cls.paper_claim.speedup,
            "note": f"{cls.paper}: {cls.paper_claim.claim}",
        }
        for cls in METHODS.values()
        if cls.paper_claim is not None
    ]


INT8_PRECISIONS = (INT8, ONNX_INT8)  # int8 in PyTorch's kernels or in ONNX Runtime's per-layer sessions
# the engine's full model at each precision, beside ONNX Runtime's whole graph at the same one (the parity rows)
PARITY = ((ONNX_INT8, INT8), (INT8, INT8), (ONNX_FP32, FP32), (FP32, FP32))
SPEED_COLUMNS = {  # what each headline compares, and at which batch size
    "measured_speedup": "engine only, batch 1",
    "e2e_speedup": "end to end (predict on one raw input; ONNX Runtime: tokenizer and session.run), batch 1",
    "batched_speedup": "engine only, batch {batch}",
}


def verdict(value: float, target: float) -> str:
    return "met" if value >= target else f"missed by {target - value:.3f}"


def point_name(row: dict) -> str:
    """``deebert (int8) at threshold 0.3``; ONNX Runtime rows say so."""
    runtime = "" if row.get("runtime", ENGINE) == ENGINE else f", {row['runtime']}"
    threshold = "" if row.get("threshold") is None else f" at threshold {row['threshold']:g}"
    return f"{row['method']} ({row.get('precision', 'fp32')}{runtime}){threshold}"


def _engine(rows: list[dict]) -> list[dict]:
    return [row for row in rows if row.get("runtime", ENGINE) == ENGINE]


def overhead_lines(measured: list[dict]) -> list[str]:
    lines = []
    for row in (row for row in _engine(measured) if row["operating_point"] == "shipped" and row["method"] != BASELINE):
        name = point_name(row)
        overhead = row.get("overhead_ratio")
        if overhead is not None:
            target = overhead_target(row.get("precision", "fp32"))
            lines.append(
                f"- {name}: overhead ratio at batch 1 = {overhead:.3f} (target >= {target}): "
                f"{verdict(overhead, target)}"
            )
        batched = row.get("batched_overhead_ratio")
        if batched is not None:
            lines.append(
                f"- {name}: batched speed-up at batch {row['batch_size']} "
                f"{row['batched_expected_speedup'] * batched:.2f}x over its full model against an expected "
                f"{row['batched_expected_speedup']:.2f}x, ratio {batched:.3f} (target >= {BATCHED_OVERHEAD_RATIO}): "
                f"{verdict(batched, BATCHED_OVERHEAD_RATIO)}"
            )
    return lines


def keep_lines(measured: list[dict], speed_column: str) -> list[str]:
    """Per method and precision: the fastest point of the dev sweep keeping ``KEEP_TARGET`` % of the fp32 full model,
    against ``MIN_EXPECTED_SPEEDUP``: what the method can reach on dev, not a point chosen on validation.
    """
    lines = []
    adaptive = [row for row in _engine(measured) if row["method"] != BASELINE]
    for method, precision in dict.fromkeys((row["method"], row.get("precision", "fp32")) for row in adaptive):
        own = [row for row in adaptive if row["method"] == method and row.get("precision", "fp32") == precision]
        keeping = [
            row
            for row in own
            if row["metric_pct_of_full"] is not None
            and row["metric_pct_of_full"] >= KEEP_TARGET
            and row.get(speed_column) is not None
        ]
        if not keeping:
            best = max(
                (row["metric_pct_of_full"] for row in own if row["metric_pct_of_full"] is not None), default=None
            )
            kept = "the full model's metric is 0 or undefined" if best is None else f"the best keeps {best:.1f}%"
            lines.append(
                f"- {method} ({precision}): no operating point keeps >= {KEEP_TARGET:g}% of the full metric "
                f"({kept}): missed"
            )
            continue
        fastest = max(keeping, key=lambda row: row[speed_column])
        threshold = "" if fastest["threshold"] is None else f" at threshold {fastest['threshold']:g}"
        lines.append(
            f"- {method} ({precision}): fastest dev-sweep point keeping >= {KEEP_TARGET:g}% of full{threshold} "
            f"({fastest['metric_pct_of_full']:.1f}%): "
            f"{speed_column.replace('_speedup', ' speed-up')} {fastest[speed_column]:.2f}x (aim >= "
            f"{MIN_EXPECTED_SPEEDUP}x): {verdict(fastest[speed_column], MIN_EXPECTED_SPEEDUP)}"
        )
    return lines


def best_point(measured: list[dict], speed_column: str) -> dict | None:
    """The fastest shipped adaptive point, at any precision, keeping ``KEEP_TARGET`` % of the fp32 full model's metric
    and answering at most ``MAX_NO_LAYER_SHARE`` of the dev inputs with no layer.

    Shipped points only: their thresholds were chosen on the validation split. Picking the best of the
    sweep by its dev metric would choose a threshold on the data it is reported on.
    """
    keeping = [
        row
        for row in _engine(measured)
        if row["method"] != BASELINE
        and row.get("operating_point") == "shipped"
        and row["metric_pct_of_full"] is not None
        and row["metric_pct_of_full"] >= KEEP_TARGET
        and (row.get("no_layer_share") or 0.0) <= MAX_NO_LAYER_SHARE
        and row.get(speed_column) is not None
    ]
    return max(keeping, key=lambda row: row[speed_column], default=None)


def headline_lines(measured: list[dict], speed_column: str) -> list[str]:
    """The best shipped adaptive point against the fp32 full model and ONNX Runtime's whole-graph int8 full model."""
    if not any(row["method"] != BASELINE for row in measured):
        return []
    batched = speed_column == "batched_speedup"
    how = SPEED_COLUMNS[speed_column].format(batch=measured[0].get("batch_size"))
    best = best_point(measured, speed_column)
    onnx = next((row for row in measured if row.get("runtime") == ONNXRUNTIME and row.get("precision") == INT8), None)
    ort_speed = None if onnx is None else onnx.get(speed_column)
    if best is None:
        return [
            f"- best shipped adaptive point ({how}): none keeps >= {KEEP_TARGET:g}% of the fp32 full model's metric "
            f"with at most {MAX_NO_LAYER_SHARE:.0%} of inputs answered with no layer: missed"
        ]
    line = f"- best shipped adaptive point ({how}) keeping >= {KEEP_TARGET:g}% of the fp32 full model: "
    line += f"{point_name(best)} "
    line += f"({best['metric_pct_of_full']:.1f}%): {best[speed_column]:.2f}x over fp32 full"
    if not batched:
        line += f" (aim >= {HEADLINE_VS_FP32}x): {verdict(best[speed_column], HEADLINE_VS_FP32)}"
    if ort_speed:
        aim = BATCHED_VS_ORT_INT8 if batched else HEADLINE_VS_ORT_INT8
        over = best[speed_column] / ort_speed
        line += f"; {over:.2f}x over ONNX Runtime's int8 full model (aim >= {aim}x): {verdict(over, aim)}"
    return [line]


def parity_lines(measured: list[dict]) -> list[str]:
    """The full model in this engine against ONNX Runtime's whole graph at the same precision, batch 1 and batched.

    A ratio is the engine's speed over ONNX Runtime's (1.0: as fast) on the same calls.
    """
    full = {(row.get("precision"), row.get("runtime", ENGINE)): row for row in measured if row["method"] == BASELINE}
    lines = []
    for precision, ort_precision in PARITY:
        engine, ort = full.get((precision, ENGINE)), full.get((ort_precision, ONNXRUNTIME))
        if engine is None or ort is None:
            continue
        for column, batch in (("measured_speedup", "1"), ("batched_speedup", ort.get("batch_size"))):
            if engine.get(column) and ort.get(column):
                parity = engine[column] / ort[column]
                lines.append(
                    f"- parity: the full model at {precision} in this engine against ONNX Runtime's whole "
                    f"{ort_precision} graph at batch {batch}: {parity:.3f}x (target >= {RUNTIME_PARITY}): "
                    f"{verdict(parity, RUNTIME_PARITY)}"
                )
    return lines


def target_summary(rows: list[dict]) -> list[str]:
    """Each target (overhead ratios, the metric kept at a speed-up, the headline against ONNX Runtime int8).

    Met, or by how much it was missed; at batch 1 and, where it was timed, at the batched size too.
    """
    measured = [row for row in rows if row["source"] == MEASURED]
    batch_one = any(row.get("measured_speedup") is not None for row in measured)
    speed_column = "measured_speedup" if batch_one else "batched_speedup"
    lines = overhead_lines(measured) + keep_lines(measured, speed_column) + headline_lines(measured, speed_column)
    if any(row.get("e2e_speedup") is not None for row in measured):
        lines += headline_lines(measured, "e2e_speedup")
    if batch_one and any(row.get("batched_speedup") is not None for row in measured):
        lines += headline_lines(measured, "batched_speedup")
    return lines + parity_lines(measured)


def metric_cell(row: dict) -> str:
    """A row's compared metrics (MRPC: accuracy and F1), else its main metric (the papers' quoted rows)."""
    return row.get("compared_metrics") or f"{row['metric_name']} {cell(row['metric'], 4)}"


def cell(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def machine_lines(machine: dict) -> list[str]:
    return [f"- {key}: {value}" for key, value in machine.items()]


def timed_text(row: dict) -> str:
    """How many dev inputs each batch size timed (runs from before ``batched_inputs`` timed one set for both)."""
    text = f"{row['timed_inputs']} dev inputs timed"
    if row.get("batch_size") and row.get("batched_inputs"):
        text += f" at batch size 1, {row['batched_inputs']} at batch size {row['batch_size']}"
    return text


def markdown(task: str, rows: list[dict], machine: dict, targets: list[str], profiled: bool) -> str:
    measured = [row for row in rows if row["source"] == MEASURED]
    quoted = [row for row in rows if row["source"] == QUOTED]
    lines = [
        f"# Benchmark: {task}",
        "",
        f"{timed_text(measured[0])} ({measured[0]['repeats']} repeats, interleaved), "
        f"metric on {measured[0]['dev_examples']} dev inputs.",
        "Speed-ups are against the fp32 full model (and the int8 full model) on the same inputs in the same "
        "run; % of full is of the fp32 full model's metric;",
        "agreement is the share of dev inputs answered as the same point in fp32 answers them; overhead = "
        "speed-up over the full model at the same precision / expected.",
        "The full model's rows at bf16, int8 and in ONNX Runtime are the reference rows: what a user would "
        "pick instead.",
        "End to end: `predict` on one raw input (tokenization, the run, the trace's answers and paths) against the "
        "tokenizer plus one `session.run` for ONNX Runtime; speed-ups over the fp32 full model's `predict`.",
        "",
        "| method | precision | runtime | threshold | point | metric | % of full | agreement | avg layers | "
        "expected | measured | vs int8 full | overhead "
        "| p50 ms | p95 ms | batch | throughput/s | batched expected | batched | batched vs int8 full | "
        "batched overhead | end-to-end p50 ms | end to end | end to end vs ORT int8 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | "
        "--- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in measured:
        agreement = row.get("agreement")
        lines.append(
            f"| {row['method']} | {row.get('precision', 'fp32')} | {row.get('runtime', ENGINE)} | "
            f"{cell(row['threshold'], 2)} | {row['operating_point']} "
            f"| {metric_cell(row)} "
            f"| {cell(row['metric_pct_of_full'], 1)} | "
            f"{'' if agreement is None else f'{100 * agreement:.1f}%'} "
            f"| {cell(row.get('avg_layers'), 2)} | {cell(row.get('expected_speedup'), 2)} | "
            f"{cell(row.get('measured_speedup'), 2)} "
            f"| {cell(row.get('speedup_vs_int8_full'), 2)} | {cell(row.get('overhead_ratio'))} | "
            f"{cell(row.get('p50_ms'), 2)} | {cell(row.get('p95_ms'), 2)} "
            f"| {cell(row.get('batch_size'))} | {cell(row.get('throughput_per_s'), 1)} | "
            f"{cell(row.get('batched_expected_speedup'), 2)} "
            f"| {cell(row.get('batched_speedup'), 2)} | {cell(row.get('batched_speedup_vs_int8_full'), 2)} | "
            f"{cell(row.get('batched_overhead_ratio'))} | {cell(row.get('e2e_p50_ms'), 2)} | "
            f"{cell(row.get('e2e_speedup'), 2)} | {cell(row.get('e2e_speedup_vs_ort_int8'), 2)} |"
        )
    lines += [
        "",
        "## Quoted from the papers (not measured here; the papers' own 12-layer models)",
        "",
        "| source | method | % of full | speed-up | claim |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in quoted:
        lines.append(
            f"| {row['source']} | {row['method']} | {cell(row.get('metric_pct_of_full'), 1)} | "
            f"{cell(row.get('quoted_speedup'), 2)} | {row['note']} |"
        )
    lines += ["", "## Targets", "", *targets, "", "## Machine", "", *machine_lines(machine)]
    if profiled:
        lines += ["", "Where the time goes: profile.txt (torch.profiler, top operators per method and precision)."]
    return "\n".join(lines) + "\n"


def write_rows(rows: list[dict], path: Path) -> None:
    import pandas as pd

    write_csv(pd.DataFrame(rows, columns=COLUMNS).astype(dict.fromkeys(COUNT_COLUMNS, "Int64")), path)


def write_chart(rows: list[dict], out: Path) -> None:
    """Metric against measured speed-up over the fp32 full model.

    One line per method and precision, the reference rows as labelled points.
    """
    import pandas as pd

    from interpret.charts import speedup_chart  # Altair: imported only when a chart is written

    measured = pd.DataFrame([row for row in rows if row["source"] == MEASURED])
    for column, default in (("precision", "fp32"), ("runtime", ENGINE)):
        measured[column] = measured[column].fillna(default) if column in measured else default
    speed = (
        "measured_speedup"
        if "measured_speedup" in measured and measured["measured_speedup"].notna().any()
        else "batched_speedup"
    )
    speed_title = "speed-up over the fp32 full model" + (
        " (batch 1)" if speed == "measured_speedup" else f" (batch {int(measured['batch_size'].iloc[0])})"
    )
    points = measured.dropna(subset=["metric", speed]).assign(
        threshold=lambda frame: frame["threshold"].astype(float),
        series=lambda frame: frame["method"] + " " + frame["precision"],
        reference=lambda frame: (
            frame["runtime"].map(lambda runtime: "full" if runtime == ENGINE else "ORT") + " " + frame["precision"]
        ),
    )
    expected, layers = (
        ("expected_speedup", "avg_layers")
        if speed == "measured_speedup"
        else ("batched_expected_speedup", "dev_avg_layers")
    )
    tooltip = [
        "method",
        "precision",
        "runtime",
        "threshold",
        "operating_point",
        "metric",
        "metric_pct_of_full",
        "agreement",
        speed,
        expected,
        layers,
    ]
    full_metric = float(
        measured.loc[
            (measured["method"] == BASELINE) & (measured["precision"] == "fp32") & (measured["runtime"] == ENGINE),
            "metric",
        ].iloc[0]
    )
    keep_rules = None
    if math.isfinite(full_metric) and full_metric > 0:
        keep_rules = pd.DataFrame(
            {
                "metric": [KEEP_TARGET / 100 * full_metric],
                "label": [f"{KEEP_TARGET:g}% of full"],
            }
        )
    title = (
        f"{measured['task'].iloc[0]}: {measured['metric_name'].iloc[0]} vs speed-up (squares: the full model "
        "in this engine and in ONNX Runtime (ORT); "
        f"diamonds: shipped points; dashed: {KEEP_TARGET:g}% of full)"
    )
    chart = speedup_chart(
        points, speed, speed_title, [column for column in tooltip if column in points], keep_rules, title
    )
    chart.save(str(out / "tradeoff.html"))
    chart.save(str(out / "tradeoff.png"))


def read_measured(path: Path) -> list[dict]:
    """The measured rows of a results.csv as ``write_report`` takes them (numbers as numbers, empty cells as None)."""
    import pandas as pd

    frame = pd.read_csv(path, dtype=dict.fromkeys(COUNT_COLUMNS, "Int64") | {"compared_metrics": str, "note": str})
    frame = frame[frame["source"] == MEASURED].astype(object).where(frame.notna(), None)
    rows = frame.to_dict("records")
    for row in rows:
        for column in COUNT_COLUMNS:
            row[column] = None if row.get(column) is None else int(row[column])
    return rows


def rerender(out: Path) -> str:
    """results.md, results.csv and the chart of a benchmark folder again from its results.csv and machine.json: a new
    report format without timing anything again.
    """
    measured = read_measured(out / "results.csv")
    if not measured:
        raise UserError(f"{out.name}/results.csv has no measured rows: run training.benchmark first")
    machine = json.loads((out / "machine.json").read_text())
    return write_report(out, measured[0]["task"], measured, machine, profiled=(out / "profile.txt").exists())


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.benchmark_report",
        description="Render a benchmark folder's results.md, results.csv and chart again from its results.csv.",
    )
    parser.add_argument("folders", nargs="+", type=Path, help="benchmark folders (assets/benchmarks/<task>)")
    args = parser.parse_args(argv)
    for folder in args.folders:
        if not (folder / "results.csv").is_file():
            raise UserError(f"{folder.name} has no results.csv: run python -m training.benchmark on the task first")
        rerender(folder)
        print(f"rendered {folder.name}/results.md")
    return 0


def write_report(out: Path, task: str, measured: list[dict], machine: dict, profiled: bool) -> str:
    """results.csv (measured rows, then the quoted ones), results.md, machine.json and the chart.

    Returns the markdown.
    """
    targets = target_summary(measured)
    rows = measured + reference_rows()
    out.mkdir(parents=True, exist_ok=True)
    write_rows(rows, out / "results.csv")
    table = markdown(task, rows, machine, targets, profiled)
    (out / "results.md").write_text(table)
    (out / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
    write_chart(rows, out)
    return table


if __name__ == "__main__":
    sys.exit(main())
