"""The benchmark runs end to end on tiny random checkpoints and writes every file and column; its report renders from
rows.

No timing is asserted: only that every operating point (each method at each precision, and the
reference rows: the full model at fp32, bf16 and int8 and in ONNX Runtime) is a row, its columns
are numbers, and the ratios between them are consistent.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch

from core.checkpoint import load_checkpoint, save_checkpoint
from core.methods import BASELINE, METHODS, adaptive_methods
from tests.conftest import SECOND, SENTENCES, randomise
from training import benchmark, benchmark_report
from training.targets import KEEP

REQUIRED_COLUMNS = [
    "task",
    "method",
    "precision",
    "runtime",
    "agreement",
    "speedup_vs_int8_full",
    "batched_speedup_vs_int8_full",
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
LATENCY_COLUMNS = ("avg_layers", "expected_speedup", "measured_speedup", "speedup_vs_int8_full", "p50_ms", "p95_ms")
BATCHED_COLUMNS = ("batched_expected_speedup", "batched_speedup", "batched_speedup_vs_int8_full", "throughput_per_s")
REFERENCE_ROWS = [
    ("fp32", "engine"),
    ("bf16", "engine"),
    ("int8", "engine"),
    ("onnx-fp32", "engine"),  # the parity rows: this project's ONNX Runtime runtime ...
    ("onnx-int8", "engine"),
    ("fp32", "onnxruntime"),  # ... beside ONNX Runtime's whole graph
    ("int8", "onnxruntime"),
]
END_TO_END_COLUMNS = ("e2e_p50_ms", "e2e_speedup", "e2e_speedup_vs_ort_int8")
# Shipped knob values: DeeBERT's 0.1 is 0.09999999999999999 in its grid, so it must replace that point, not sit beside
# it.
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
    (mrpc / "dev.tsv").write_text(
        "\n".join(["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String", *rows]) + "\n", encoding="utf-8"
    )
    return mrpc.parent


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with path.open() as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def number(row: dict, column: str) -> float:
    value = float(row[column])
    assert math.isfinite(value), (row["method"], row["threshold"], column, row[column])
    return value


def assert_consistent(row: dict, rows: list[dict], num_layers: int, batched_only: bool = False) -> None:
    """Numbers in every timing column, and the ratios between columns as the harness defines them."""
    where = (row["method"], row["precision"], row["runtime"], row["threshold"])
    full = find(rows, "full", "fp32")
    int8_full = find(rows, "full", "int8")
    own_full = find(rows, "full", row["precision"], row["runtime"])
    engine = row["runtime"] == "engine"
    for column in (() if batched_only else LATENCY_COLUMNS) + BATCHED_COLUMNS:
        assert number(row, column) > 0, (*where, column)
    assert 0 < number(row, "dev_avg_layers") <= num_layers, where
    assert number(row, "metric_pct_of_full") == pytest.approx(100 * number(row, "metric") / number(full, "metric")), (
        where
    )
    if row["precision"] == "fp32" and engine:
        assert row["agreement"] == "", where  # fp32 is what the others agree with
    else:
        assert 0 <= number(row, "agreement") <= 1, where
    # speed-ups over the fp32 and the int8 full model come from the same clock: their quotient is the int8 full model's
    # speed-up
    assert number(row, "batched_speedup") / number(row, "batched_speedup_vs_int8_full") == pytest.approx(
        number(int8_full, "batched_speedup")
    ), where
    if engine:
        assert number(row, "batched_overhead_ratio") * number(row, "batched_expected_speedup") == pytest.approx(
            number(row, "batched_speedup") / number(own_full, "batched_speedup")
        ), where
    else:  # ONNX Runtime runs the whole model: no decisions, no overhead to speak of
        assert row["batched_overhead_ratio"] == "" and number(row, "dev_avg_layers") == num_layers, where
    if batched_only:
        assert all(row[column] == "" for column in LATENCY_COLUMNS), where
        return
    assert 0 < number(row, "avg_layers") <= num_layers, where
    assert number(row, "expected_speedup") == pytest.approx(num_layers / number(row, "avg_layers")), where
    assert number(row, "measured_speedup") / number(row, "speedup_vs_int8_full") == pytest.approx(
        number(int8_full, "measured_speedup")
    ), where
    if engine:
        assert number(row, "speedup_vs_full_same_precision") == pytest.approx(
            number(row, "measured_speedup") / number(own_full, "measured_speedup")
        ), where
        assert number(row, "overhead_ratio") == pytest.approx(
            number(row, "speedup_vs_full_same_precision") / number(row, "expected_speedup")
        ), where
    else:
        assert row["overhead_ratio"] == "" and row["speedup_vs_full_same_precision"] == "", where
    assert number(row, "p50_ms") <= number(row, "p95_ms"), where


def find(rows: list[dict], method: str, precision: str, runtime: str = "engine") -> dict:
    return next(
        row for row in rows if row["method"] == method and row["precision"] == precision and row["runtime"] == runtime
    )


def run_benchmark(checkpoints: Path, glue_dir: Path, out: Path, capsys, options: str) -> tuple[list[str], list[dict]]:
    """The benchmark on MRPC over the fixtures' checkpoints and data, written to ``out``, with ``options`` (the other
    command-line options, space-separated): results.csv's columns and rows. A failed run fails with its error output.
    """
    places = ["--task", "MRPC", "--checkpoints", str(checkpoints), "--data-dir", str(glue_dir), "--out", str(out)]
    code = benchmark.main([*places, *options.split()])
    assert code == 0, capsys.readouterr().err
    return read_rows(out / "results.csv")


def test_benchmark_writes_csv_table_chart_and_profile(checkpoints, glue_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    options = "--limit 4 --repeats 1 --warmup 1 --batch-sizes 1,4 --profile"
    columns, rows = run_benchmark(checkpoints, glue_dir, out, capsys, options)
    assert columns == benchmark_report.COLUMNS and set(REQUIRED_COLUMNS) <= set(columns)

    measured = [row for row in rows if row["source"] == benchmark_report.MEASURED]
    assert list(dict.fromkeys(row["method"] for row in measured)) == list(
        METHODS
    )  # every method, PABEE too, in display order
    assert [(row["precision"], row["runtime"]) for row in measured if row["method"] == BASELINE] == REFERENCE_ROWS
    models = {method: load_checkpoint(checkpoints / method) for method in METHODS}
    full = find(measured, BASELINE, "fp32")
    assert number(full, "metric") > 0
    num_layers = models[BASELINE].num_layers
    for method, model in models.items():
        if method == BASELINE:
            continue
        own = [row for row in measured if row["method"] == method]
        assert list(dict.fromkeys(row["precision"] for row in own)) == ["fp32", "int8"] and {
            row["runtime"] for row in own
        } == {"engine"}  # the default --precisions
        for precision in ("fp32", "int8"):
            points = [row for row in own if row["precision"] == precision]
            knob = model.method.knob
            if knob is None:  # DACT: the shipped point only
                assert [(row["threshold"], row["operating_point"]) for row in points] == [("", "shipped")]
                continue
            thresholds = [float(row["threshold"]) for row in points]
            assert thresholds == sorted(thresholds) and len(points) == len(knob.sweep), (
                method
            )  # the shipped value is on the grid: no extra point
            for value in knob.sweep:
                assert any(math.isclose(value, threshold, rel_tol=1e-9) for threshold in thresholds), (method, value)
            assert [float(row["threshold"]) for row in points if row["operating_point"] == "shipped"] == [
                SHIPPED[method]
            ]
    for row in measured:
        assert (
            row["task"] == "MRPC"
            and row["metric_name"] == "f1"
            and row["timed_inputs"] == "4"
            and row["batched_inputs"] == "8"  # by default more inputs than --limit at the larger batch, up to dev's 8
            and row["repeats"] == "1"
            and row["batch_size"] == "4"
        )
        # MRPC's % of full compares accuracy and F1 both, so the table shows both
        assert re.fullmatch(r"accuracy \d\.\d{4} / f1 \d\.\d{4}", row["compared_metrics"]), row["compared_metrics"]
        assert_consistent(row, measured, num_layers)
    for column in (
        "expected_speedup",
        "measured_speedup",
        "overhead_ratio",
        "batched_speedup",
        "batched_overhead_ratio",
        "metric_pct_of_full",
    ):
        assert number(full, column) == pytest.approx(100.0 if column == "metric_pct_of_full" else 1.0), (
            column
        )  # the full model against itself
    int8_full = find(measured, BASELINE, "int8")
    assert number(int8_full, "speedup_vs_int8_full") == pytest.approx(1.0) and number(
        int8_full, "overhead_ratio"
    ) == pytest.approx(1.0)
    onnx_fp32 = find(measured, BASELINE, "fp32", "onnxruntime")
    assert number(onnx_fp32, "metric") == pytest.approx(
        number(full, "metric"), abs=0.05
    )  # the same model in another runtime

    quoted = [row for row in rows if row["source"] != benchmark_report.MEASURED]
    assert [row["method"] for row in quoted] == adaptive_methods()
    assert all(
        row["source"] == benchmark_report.QUOTED and "not measured" in row["source"] and not row["measured_speedup"]
        for row in quoted
    )
    assert "BERT Loses Patience" in next(row["note"] for row in quoted if row["method"] == "pabee")

    lines = (out / "results.md").read_text().splitlines()
    for method in METHODS:
        table_rows = [line for line in lines if line.startswith(f"| {method} |")]
        assert len(table_rows) == sum(row["method"] == method for row in measured), method
    targets = lines[lines.index("## Targets") : lines.index("## Machine")]
    for method in adaptive_methods():
        for precision in ("fp32", "int8"):
            assert any(
                line.startswith(f"- {method} ({precision}): fastest dev-sweep point")
                or line.startswith(f"- {method} ({precision}): no operating point")
                for line in targets
            )
    assert any(line.startswith("- best shipped adaptive point (engine only, batch 1)") for line in targets)
    assert any(line.startswith("- best shipped adaptive point (end to end") for line in targets)
    parity = [line for line in targets if line.startswith("- parity:")]
    assert len(parity) == 8, parity  # onnx-int8, int8, onnx-fp32 and fp32 beside ORT, at batch 1 and 4
    engine_int8, ort_int8 = find(measured, BASELINE, "onnx-int8"), find(measured, BASELINE, "int8", "onnxruntime")
    ratio = number(engine_int8, "measured_speedup") / number(ort_int8, "measured_speedup")
    assert f"ONNX Runtime's whole int8 graph at batch 1: {ratio:.3f}x" in "\n".join(parity)
    for row in measured:  # end to end: the shipped points and the reference rows, never the sweep
        if row["operating_point"] == "shipped":
            assert all(number(row, column) > 0 for column in END_TO_END_COLUMNS), (row["method"], row["precision"])
        else:
            assert all(row[column] == "" for column in END_TO_END_COLUMNS), (row["method"], row["threshold"])
    full_e2e = find(measured, BASELINE, "fp32")
    assert number(full_e2e, "e2e_speedup") == pytest.approx(1.0)
    assert number(ort_int8, "e2e_speedup_vs_ort_int8") == pytest.approx(1.0)
    assert any("not measured" in line for line in lines) and any("torch_threads" in line for line in lines)
    machine = json.loads((out / "machine.json").read_text())
    assert machine["torch_threads"] >= 1 and machine["onnxruntime"] != "not installed"
    for name in ("tradeoff.html", "tradeoff.png", "machine.json", "profile.txt"):
        assert (out / name).stat().st_size > 0, name
    chart = (out / "tradeoff.html").read_text()
    assert "ORT int8" in chart and "full int8" in chart and "bf16" in chart  # the reference rows are on the chart
    profiled = (out / "profile.txt").read_text()
    assert all(f"== {method}" in profiled for method in METHODS) and " int8:" in profiled and " fp32:" in profiled


def test_onnx_int8_points_are_measured_and_count_as_int8_points(checkpoints, glue_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    options = "--methods pabee --precisions onnx-int8 --no-onnxruntime --limit 4 --repeats 1 --batch-sizes 1,4"
    _, rows = run_benchmark(checkpoints, glue_dir, out, capsys, options)
    measured = [row for row in rows if row["source"] == benchmark_report.MEASURED]
    assert {row["precision"] for row in measured if row["method"] == "pabee"} == {"onnx-int8"}
    assert [row["precision"] for row in measured if row["method"] == BASELINE] == ["fp32", "bf16", "int8", "onnx-int8"]
    assert all(row["speedup_vs_int8_full"] for row in measured if row["method"] == "pabee")
    targets = (out / "results.md").read_text()
    assert "- best shipped adaptive point" in targets


def test_methods_option_takes_every_adaptive_method_and_limits_the_rows(checkpoints, glue_dir, tmp_path, capsys):
    assert benchmark.parse_args(["--task", "MRPC", "--methods", *adaptive_methods()]).methods == adaptive_methods()
    out = tmp_path / "bench"
    options = (
        "--methods pabee --precisions int8 --no-onnxruntime --limit 4 --batched-limit 5 --repeats 1 --batch-sizes 4"
    )
    _, rows = run_benchmark(checkpoints, glue_dir, out, capsys, options)
    measured = [row for row in rows if row["source"] == benchmark_report.MEASURED]
    assert {row["method"] for row in measured} == {BASELINE, "pabee"}
    assert {row["batched_inputs"] for row in measured} == {"5"}
    assert "5 at batch size 4" in (out / "results.md").read_text()
    assert {row["precision"] for row in measured if row["method"] == "pabee"} == {
        "int8"
    }  # --precisions int8: no fp32 pabee rows ...
    assert [row["precision"] for row in measured if row["method"] == BASELINE] == [
        "fp32",
        "bf16",
        "int8",
    ]  # ... but every engine reference row
    assert all(row["runtime"] == "engine" for row in measured)  # --no-onnxruntime
    for row in measured:  # batch size 4 only: throughput columns, no latency ones
        if row["method"] == "pabee":
            assert row["agreement"] == "", "no fp32 pabee point was run to agree with"
            row = {**row, "agreement": "0"}
        assert_consistent(row, measured, load_checkpoint(checkpoints / BASELINE).num_layers, batched_only=True)
    assert not (out / "profile.txt").exists()


def synthetic_rows() -> list[dict]:
    """Measured rows for every method in METHODS: the reference rows, then two points per adaptive method and precision
    (one keeps 99 %/98 %, one 90 %).

    int8 runs twice as fast as fp32 in the engine, ONNX Runtime int8 three times.
    """

    def row(
        method: str,
        threshold: float | None,
        point: str,
        pct: float,
        speedup: float,
        precision: str = "fp32",
        runtime: str = "engine",
    ) -> dict:
        faster = {("fp32", "engine"): 1.0, ("int8", "engine"): 2.0, ("int8", "onnxruntime"): 3.0}[(precision, runtime)]
        return {
            "source": benchmark_report.MEASURED,
            "task": "MRPC",
            "method": method,
            "precision": precision,
            "runtime": runtime,
            "threshold": threshold,
            "operating_point": point,
            "metric_name": "f1",
            "metric": 0.8 * pct / 100,
            "metric_pct_of_full": pct,
            "agreement": None if (precision, runtime) == ("fp32", "engine") else 0.97,
            "avg_layers": 6 / speedup,
            "expected_speedup": speedup,
            "measured_speedup": faster * (0.9 if method != BASELINE else 1.0) * speedup,
            "speedup_vs_int8_full": faster * (0.9 if method != BASELINE else 1.0) * speedup / 2.0,
            "speedup_vs_full_same_precision": (0.9 if method != BASELINE else 1.0) * speedup,
            "overhead_ratio": 0.9 if method != BASELINE else 1.0,
            "p50_ms": 10.0 / speedup,
            "p95_ms": 12.0 / speedup,
            "batch_size": 32,
            "throughput_per_s": 100.0 * speedup,
            "batched_expected_speedup": speedup,
            "batched_speedup": faster * 0.85 * speedup,
            "batched_speedup_vs_int8_full": faster * 0.85 * speedup / 2.0,
            "batched_overhead_ratio": 0.85,
            "dev_avg_layers": 6 / speedup,
            "dev_examples": 408,
            "timed_inputs": 200,
            "repeats": 3,
        }

    rows = [
        row(BASELINE, None, "shipped", 100.0, 1.0),
        row(BASELINE, None, "shipped", 99.5, 1.0, "int8"),
        row(BASELINE, None, "shipped", 99.0, 1.0, "int8", "onnxruntime"),
    ]
    for method in adaptive_methods():
        rows += [row(method, 0.5, "shipped", 99.0, 2.0), row(method, 0.7, "sweep", 90.0, 4.0)]
        rows += [row(method, 0.5, "shipped", 98.0, 2.0, "int8"), row(method, 0.7, "sweep", 90.0, 4.0, "int8")]
    return rows


def test_report_renders_every_measured_method_the_quoted_rows_and_targets(tmp_path):
    rows = synthetic_rows()
    machine = {"cpu": "test cpu", "torch_threads": 1}
    table = benchmark_report.write_report(tmp_path, "MRPC", rows, machine, profiled=False)
    assert (tmp_path / "results.md").read_text() == table
    lines = table.splitlines()
    for method in METHODS:
        assert sum(line.startswith(f"| {method} |") for line in lines) == sum(
            row["method"] == method for row in rows
        ), method
    quoted = [line for line in lines if line.startswith(f"| {benchmark_report.QUOTED} |")]
    assert [line.split(" | ")[1] for line in quoted] == adaptive_methods()
    assert "- cpu: test cpu" in lines and "profile.txt" not in table
    assert benchmark_report.KEEP_TARGET == 100 * KEEP
    for method in (
        adaptive_methods()
    ):  # 99 % kept at 0.9 * 2 = 1.8x measured: the aim (1.5x) is met; overhead 0.9 < 0.95 is missed
        assert (
            f"- {method} (fp32): fastest dev-sweep point keeping >= {benchmark_report.KEEP_TARGET:g}% of full at "
            "threshold 0.5 (99.0%): measured speed-up 1.80x (aim >= 1.5x): met" in lines
        )
        assert (
            f"- {method} (fp32) at threshold 0.5: overhead ratio at batch 1 = 0.900 (target >= 0.95): missed by 0.050"
            in lines
        )
        assert f"- {method} (int8) at threshold 0.5: overhead ratio at batch 1 = 0.900 (target >= 0.9): met" in lines
        assert any(
            line.startswith(f"- {method} (int8) at threshold 0.5: batched speed-up at batch 32 1.70x")
            and line.endswith("(target >= 0.9): missed by 0.050")
            for line in lines
        )
    # headline: int8 at 2x, adaptive 0.9 * 2 on top = 3.6x over fp32 full, keeping 98 %; ONNX Runtime int8 at 3x
    best = adaptive_methods()[0]
    assert (
        "- best shipped adaptive point (engine only, batch 1) keeping >= 98% of the fp32 full model: "
        f"{best} (int8) at threshold 0.5 (98.0%): 3.60x over fp32 full (aim >= 3.0x): met; "
        "1.20x over ONNX Runtime's int8 full model (aim >= 1.5x): missed by 0.300" in lines
    )
    assert not any(line.startswith(f"- {BASELINE}") for line in lines)
    assert (
        any(line.startswith("| full | int8 | onnxruntime |") for line in lines) and "| 97.0% |" in table
    )  # agreement as a share

    columns, written = read_rows(tmp_path / "results.csv")
    assert columns == benchmark_report.COLUMNS
    assert len(written) == len(rows) + len(benchmark_report.reference_rows())
    assert [row["batch_size"] for row in written[: len(rows)]] == ["32"] * len(rows)  # counts stay whole numbers
    for name in ("tradeoff.html", "tradeoff.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "machine.json").read_text()) == machine
    # rendered again from the saved files: the same report
    assert benchmark_report.rerender(tmp_path) == table
    assert benchmark_report.main([str(tmp_path)]) == 0 and (tmp_path / "results.md").read_text() == table


def test_targets_report_what_is_missed_and_an_onnx_runtime_gap(tmp_path):
    rows = [row for row in synthetic_rows() if row["method"] == BASELINE or row["operating_point"] == "sweep"]
    lines = benchmark_report.target_summary(rows + benchmark_report.reference_rows())
    for method in adaptive_methods():
        for precision in ("fp32", "int8"):
            assert (
                f"- {method} ({precision}): no operating point keeps >= {benchmark_report.KEEP_TARGET:g}% of "
                "the full metric (the best keeps 90.0%): missed" in lines
            )
    assert (
        "- best shipped adaptive point (engine only, batch 1): none keeps >= 98% of the fp32 full model's metric with "
        "at most 5% of inputs answered with no layer: missed" in lines
    )
    # no shipped rows: no overhead lines; quoted rows are no targets; the headline at batch 1 and at the batched size,
    # then the full model's parity with ONNX Runtime
    parity = benchmark_report.parity_lines(rows)
    assert parity and all(line.startswith("- parity:") for line in parity)
    assert len(lines) == 2 * len(adaptive_methods()) + 2 + len(parity) and lines[-len(parity) :] == parity
    slow = [
        {**row, "measured_speedup": 2.4} if row["precision"] == "int8" and row["method"] != BASELINE else row
        for row in synthetic_rows()
    ]
    lines = benchmark_report.target_summary(slow)
    assert any(
        line.startswith("- best shipped adaptive point")
        and "2.40x over fp32 full (aim >= 3.0x): missed by 0.600" in line
        and "0.80x over ONNX Runtime's int8 full model (aim >= 1.5x): missed by 0.700" in line
        for line in lines
    ), "slower than ONNX Runtime's int8 full model is stated as a miss, by how much"


def test_missing_checkpoint_is_one_line_naming_the_folder(tmp_path, glue_dir, capsys):
    code = benchmark.main(["--task", "MRPC", "--checkpoints", str(tmp_path / "none"), "--data-dir", str(glue_dir)])
    error = capsys.readouterr().err
    assert (
        code == 2
        and error.count("\n") == 1
        and str(tmp_path / "none" / BASELINE) in error
        and "Traceback" not in error
    )


def test_onnx_runtime_reference_answers_what_the_engine_answers(make_model, tmp_path):
    """The exported full model equals the engine's on a padded batch (fp32) and stays close in int8.

    Adaptive methods are not exported.
    """
    from core.errors import UserError
    from core.onnx_layers import quantize_onnx
    from training.onnx_reference import OnnxModel, export_full_model

    for task in ("MRPC", "STS-B"):  # class probabilities and a regression score
        model = randomise(make_model(BASELINE, task), seed=1, scale=0.3)
        batch = model.tokenize(SENTENCES, SECOND)
        assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
        engine = torch.stack(
            [
                torch.tensor(list(t.probabilities.values())) if t.probabilities else torch.tensor(t.prediction)
                for t in model.predict(SENTENCES, SECOND)
            ]
        )
        exported = export_full_model(model, tmp_path / task)
        fp32 = OnnxModel(exported, threads=1).run(batch)
        assert fp32.shape == tuple(engine.shape) and abs(fp32 - engine.numpy()).max() < 1e-4
        single = OnnxModel(exported, threads=1).run(
            model.tokenize(SENTENCES[:1], SECOND[:1])
        )  # another batch size and length: the axes are dynamic
        assert abs(single[0] - fp32[0]).max() < 1e-4
        int8 = OnnxModel(quantize_onnx(exported, tmp_path / task / "full-int8.onnx"), threads=1).run(batch)
        assert (
            abs(int8 - engine.numpy()).max() < 0.05 and abs(int8 - engine.numpy()).max() > 0
        )  # quantized: close, not identical
    with pytest.raises(UserError, match="only the full model"):
        export_full_model(make_model("deebert"), tmp_path / "deebert")


def test_timed_calls_run_every_point_on_every_input_with_changing_neighbours():
    calls = []

    class Recording:
        def __init__(self, name: str):
            self.point = name

        def __call__(self, batch):
            calls.append(self.point)
            return batch

        def count(self, result):
            return 1, 6

    runners = [Recording(name) for name in "abcdef"]
    timings = benchmark.time_interleaved(runners, list(range(20)), repeats=2, warmup=0)
    assert all(len(timings[name].per_batch_seconds) == 20 for name in "abcdef")
    assert all(calls.count(name) == 40 for name in "abcdef")
    rounds = [calls[start : start + 6] for start in range(0, len(calls), 6)]
    assert all(sorted(order) == list("abcdef") for order in rounds)
    before_b = {order[order.index("b") - 1] for order in rounds if order.index("b")}
    assert len(before_b) > 1, "a point that always follows the same neighbour inherits what that neighbour leaves"


def test_headline_takes_shipped_points_only_whose_thresholds_were_chosen_on_validation():
    rows = [row for row in synthetic_rows() if row["source"] == benchmark_report.MEASURED]
    shipped = benchmark_report.best_point(rows, "measured_speedup")
    faster_on_dev = [
        {**row, "metric_pct_of_full": 99.0, "measured_speedup": 10.0} if row["operating_point"] == "sweep" else row
        for row in rows
    ]  # a sweep point that keeps 99 % on dev at 10x: its threshold would be chosen on dev
    assert shipped is not None and benchmark_report.best_point(faster_on_dev, "measured_speedup") is shipped


def test_missing_results_are_one_line_naming_the_folder(tmp_path, capsys):
    assert benchmark_report.main([str(tmp_path / "mrpc")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: mrpc has no results.csv") and "Traceback" not in error


def test_headline_passes_over_a_point_that_answers_many_inputs_with_no_layer():
    rows = [row for row in synthetic_rows() if row["source"] == benchmark_report.MEASURED]
    best = benchmark_report.best_point(rows, "measured_speedup")
    assert best is not None
    shortcut = [{**row, "no_layer_share": 0.4} if row is best else row for row in rows]
    other = benchmark_report.best_point(shortcut, "measured_speedup")
    assert other is not None and (other["method"], other["precision"], other["threshold"]) != (
        best["method"],
        best["precision"],
        best["threshold"],
    )
