"""The benchmark runs end to end on tiny random checkpoints and writes every file and column; its report renders from rows.

No timing is asserted: only that every operating point is a row, its columns are numbers, and the
ratios between them are consistent.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from core.checkpoint import load_checkpoint, save_checkpoint
from core.methods import BASELINE, METHODS, adaptive_methods
from tests.conftest import SECOND, SENTENCES, randomise
from training import benchmark, benchmark_report
from training.calibration import KEEP

REQUIRED_COLUMNS = [
    "task",
    "method",
    "threshold",
    "metric",
    "metric_pct_of_full",
    "avg_layers",
    "expected_speedup",
    "measured_speedup",
    "overhead_ratio",
    "p50_ms",
    "p95_ms",
    "batched_speedup",
    "batched_expected_speedup",
    "throughput_per_s",
    "source",
]
LATENCY_COLUMNS = ("avg_layers", "expected_speedup", "measured_speedup", "overhead_ratio", "p50_ms", "p95_ms")
BATCHED_COLUMNS = ("batched_expected_speedup", "batched_speedup", "batched_overhead_ratio", "throughput_per_s")
# Shipped knob values: DeeBERT's 0.1 is 0.09999999999999999 in its grid, so it must replace that point, not sit beside it.
SHIPPED = {"deebert": 0.1, "dpbert": 0.5, "pabee": 2.0}


@pytest.fixture
def checkpoints(make_model, tmp_path) -> Path:
    """Every method (PABEE included) as a saved checkpoint with random heads, so inputs take different paths."""
    folder = tmp_path / "checkpoints"
    for seed, method in enumerate(METHODS, start=1):  # seed 1: the full model's f1 is not 0, so "% of full" is defined
        model = randomise(make_model(method), seed=seed, scale=3.0 if method == "dpbert" else 1.0)
        model.config.threshold = SHIPPED.get(method)
        save_checkpoint(model, folder / method)
    return folder


@pytest.fixture
def glue_dir(tmp_path) -> Path:
    """A miniature MRPC dev set in the official format (byte-order mark in the header)."""
    mrpc = tmp_path / "glue" / "MRPC"
    mrpc.mkdir(parents=True)
    rows = [f"{index % 2}\t{index}\t{index + 100}\t{a}\t{b}" for index, (a, b) in enumerate(zip(SENTENCES, SECOND))]
    (mrpc / "dev.tsv").write_text("\n".join(["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String", *rows]) + "\n", encoding="utf-8")
    return mrpc.parent


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with path.open() as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def number(row: dict, column: str) -> float:
    value = float(row[column])
    assert math.isfinite(value), (row["method"], row["threshold"], column, row[column])
    return value


def assert_consistent(row: dict, full: dict, num_layers: int, batched_only: bool = False) -> None:
    """Numbers in every timing column, and the ratios between columns as the harness defines them."""
    where = (row["method"], row["threshold"])
    for column in (() if batched_only else LATENCY_COLUMNS) + BATCHED_COLUMNS:
        assert number(row, column) > 0, (*where, column)
    assert 0 < number(row, "dev_avg_layers") <= num_layers, where
    assert number(row, "batched_overhead_ratio") == pytest.approx(number(row, "batched_speedup") / number(row, "batched_expected_speedup")), where
    assert number(row, "metric_pct_of_full") == pytest.approx(100 * number(row, "metric") / number(full, "metric")), where
    if batched_only:
        assert all(row[column] == "" for column in LATENCY_COLUMNS), where
        return
    assert 0 < number(row, "avg_layers") <= num_layers, where
    assert number(row, "expected_speedup") == pytest.approx(num_layers / number(row, "avg_layers")), where
    assert number(row, "overhead_ratio") == pytest.approx(number(row, "measured_speedup") / number(row, "expected_speedup")), where
    assert number(row, "p50_ms") <= number(row, "p95_ms"), where


def test_benchmark_writes_csv_table_chart_and_profile(checkpoints, glue_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    code = benchmark.main(
        [
            "--task",
            "MRPC",
            "--checkpoints",
            str(checkpoints),
            "--data-dir",
            str(glue_dir),
            "--out",
            str(out),
            "--limit",
            "4",
            "--repeats",
            "1",
            "--warmup",
            "1",
            "--batch-sizes",
            "1,4",
            "--profile",
        ]
    )
    assert code == 0, capsys.readouterr().err
    columns, rows = read_rows(out / "results.csv")
    assert columns == benchmark_report.COLUMNS and set(REQUIRED_COLUMNS) <= set(columns)

    measured = [row for row in rows if row["source"] == benchmark_report.MEASURED]
    assert list(dict.fromkeys(row["method"] for row in measured)) == list(METHODS)  # every method, PABEE too, in display order
    models = {method: load_checkpoint(checkpoints / method) for method in METHODS}
    full = next(row for row in measured if row["method"] == BASELINE)
    assert number(full, "metric") > 0
    num_layers = models[BASELINE].num_layers
    for method, model in models.items():
        own = [row for row in measured if row["method"] == method]
        knob = model.method.knob
        if knob is None:  # the full model and DACT: the shipped point only
            assert [(row["threshold"], row["operating_point"]) for row in own] == [("", "shipped")]
            continue
        thresholds = [float(row["threshold"]) for row in own]
        assert thresholds == sorted(thresholds) and len(own) == len(knob.sweep), method  # the shipped value is on the grid: no extra point
        for value in knob.sweep:
            assert any(math.isclose(value, threshold, rel_tol=1e-9) for threshold in thresholds), (method, value)
        assert [float(row["threshold"]) for row in own if row["operating_point"] == "shipped"] == [SHIPPED[method]]
    for row in measured:
        assert row["task"] == "MRPC" and row["metric_name"] == "f1" and row["timed_inputs"] == "4" and row["repeats"] == "1" and row["batch_size"] == "4"
        assert_consistent(row, full, num_layers)
    for column in ("expected_speedup", "measured_speedup", "overhead_ratio", "batched_speedup", "batched_overhead_ratio", "metric_pct_of_full"):
        assert number(full, column) == pytest.approx(100.0 if column == "metric_pct_of_full" else 1.0), column  # the full model against itself

    quoted = [row for row in rows if row["source"] != benchmark_report.MEASURED]
    assert [row["method"] for row in quoted] == adaptive_methods()
    assert all(row["source"] == benchmark_report.QUOTED and "not measured" in row["source"] and not row["measured_speedup"] for row in quoted)
    assert "BERT Loses Patience" in next(row["note"] for row in quoted if row["method"] == "pabee")

    lines = (out / "results.md").read_text().splitlines()
    for method in METHODS:
        table_rows = [line for line in lines if line.startswith(f"| {method} |")]
        assert len(table_rows) == sum(row["method"] == method for row in measured), method
    targets = lines[lines.index("## Targets (issue 5)") : lines.index("## Machine")]
    for method in adaptive_methods():
        assert any(line.startswith(f"- {method}: fastest point") or line.startswith(f"- {method}: no operating point") for line in targets), method
    assert any("not measured" in line for line in lines) and any("torch_threads" in line for line in lines)
    assert json.loads((out / "machine.json").read_text())["torch_threads"] >= 1
    for name in ("tradeoff.html", "tradeoff.png", "machine.json", "profile.txt"):
        assert (out / name).stat().st_size > 0, name
    profiled = (out / "profile.txt").read_text()
    assert all(f"== {method}" in profiled for method in METHODS)


def test_methods_option_takes_every_adaptive_method_and_limits_the_rows(checkpoints, glue_dir, tmp_path, capsys):
    assert benchmark.parse_args(["--task", "MRPC", "--methods", *adaptive_methods()]).methods == adaptive_methods()
    out = tmp_path / "bench"
    code = benchmark.main(
        [
            "--task",
            "MRPC",
            "--checkpoints",
            str(checkpoints),
            "--data-dir",
            str(glue_dir),
            "--out",
            str(out),
            "--methods",
            "pabee",
            "--limit",
            "4",
            "--repeats",
            "1",
            "--batch-sizes",
            "4",
        ]
    )
    assert code == 0, capsys.readouterr().err
    _, rows = read_rows(out / "results.csv")
    measured = [row for row in rows if row["source"] == benchmark_report.MEASURED]
    assert {row["method"] for row in measured} == {BASELINE, "pabee"}
    full = next(row for row in measured if row["method"] == BASELINE)
    for row in measured:  # batch size 4 only: throughput columns, no latency ones
        assert_consistent(row, full, load_checkpoint(checkpoints / BASELINE).num_layers, batched_only=True)
    assert not (out / "profile.txt").exists()


def synthetic_rows() -> list[dict]:
    """Measured rows for every method in METHODS: the full model, then two points per adaptive method (one keeps 99 %, one 90 %)."""

    def row(method: str, threshold: float | None, point: str, pct: float, speedup: float) -> dict:
        return {
            "source": benchmark_report.MEASURED,
            "task": "MRPC",
            "method": method,
            "threshold": threshold,
            "operating_point": point,
            "metric_name": "f1",
            "metric": 0.8 * pct / 100,
            "metric_pct_of_full": pct,
            "avg_layers": 6 / speedup,
            "expected_speedup": speedup,
            "measured_speedup": 0.9 * speedup,
            "overhead_ratio": 0.9,
            "p50_ms": 10.0 / speedup,
            "p95_ms": 12.0 / speedup,
            "batch_size": 32,
            "throughput_per_s": 100.0 * speedup,
            "batched_expected_speedup": speedup,
            "batched_speedup": 0.85 * speedup,
            "batched_overhead_ratio": 0.85,
            "dev_avg_layers": 6 / speedup,
            "dev_examples": 408,
            "timed_inputs": 200,
            "repeats": 3,
        }

    rows = [row(BASELINE, None, "shipped", 100.0, 1.0)]
    for method in adaptive_methods():
        rows += [row(method, 0.5, "shipped", 99.0, 2.0), row(method, 0.7, "sweep", 90.0, 4.0)]
    return rows


def test_report_renders_every_measured_method_the_quoted_rows_and_targets(tmp_path):
    rows = synthetic_rows()
    machine = {"cpu": "test cpu", "torch_threads": 1}
    table = benchmark_report.write_report(tmp_path, "MRPC", rows, machine, profiled=False)
    assert (tmp_path / "results.md").read_text() == table
    lines = table.splitlines()
    for method in METHODS:
        assert sum(line.startswith(f"| {method} |") for line in lines) == sum(row["method"] == method for row in rows), method
    quoted = [line for line in lines if line.startswith(f"| {benchmark_report.QUOTED} |")]
    assert [line.split(" | ")[1] for line in quoted] == adaptive_methods()
    assert "- cpu: test cpu" in lines and "profile.txt" not in table
    assert benchmark_report.KEEP_TARGET == 100 * KEEP
    for method in adaptive_methods():  # 99 % kept at 0.9 * 2 = 1.8x measured: the aim (1.5x) is met; overhead 0.9 < 0.95 is missed
        assert (
            f"- {method}: fastest point keeping >= {benchmark_report.KEEP_TARGET:g}% of full at threshold 0.5 (99.0%): measured speed-up 1.80x (aim >= 1.5x): met"
            in lines
        )
        assert f"- {method} at threshold 0.5: overhead ratio at batch 1 = 0.900 (target >= 0.95): missed by 0.050" in lines
    assert not any(line.startswith(f"- {BASELINE}") for line in lines)

    columns, written = read_rows(tmp_path / "results.csv")
    assert columns == benchmark_report.COLUMNS
    assert len(written) == len(rows) + len(benchmark_report.PAPER_CLAIMS)
    assert [row["batch_size"] for row in written[: len(rows)]] == ["32"] * len(rows)  # counts stay whole numbers
    for name in ("tradeoff.html", "tradeoff.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "machine.json").read_text()) == machine


def test_targets_report_a_method_that_keeps_no_point(tmp_path):
    rows = [row for row in synthetic_rows() if row["method"] == BASELINE or row["operating_point"] == "sweep"]
    lines = benchmark_report.target_summary(rows + benchmark_report.reference_rows())
    for method in adaptive_methods():
        assert f"- {method}: no operating point keeps >= {benchmark_report.KEEP_TARGET:g}% of the full metric (the best keeps 90.0%): missed" in lines
    assert len(lines) == len(adaptive_methods())  # no shipped rows: no overhead lines; quoted rows are not targets


def test_missing_checkpoint_is_one_line_naming_the_folder(tmp_path, glue_dir, capsys):
    code = benchmark.main(["--task", "MRPC", "--checkpoints", str(tmp_path / "none"), "--data-dir", str(glue_dir)])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and str(tmp_path / "none" / BASELINE) in error and "Traceback" not in error
