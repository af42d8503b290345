"""The benchmark runs end to end on tiny random checkpoints and writes every file and column. No timing is asserted."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from core.checkpoint import save_checkpoint
from tests.conftest import SECOND, SENTENCES, randomise
from training import benchmark
from training.publish import SWEEPS

REQUIRED_COLUMNS = [
    "task", "method", "threshold", "metric", "metric_pct_of_full", "avg_layers", "expected_speedup", "measured_speedup",
    "overhead_ratio", "p50_ms", "p95_ms", "batched_speedup", "batched_expected_speedup", "throughput_per_s", "source",
]


@pytest.fixture
def checkpoints(make_model, tmp_path) -> Path:
    """Every method as a saved checkpoint with random heads, so inputs take different paths."""
    folder = tmp_path / "checkpoints"
    for seed, method in enumerate(["full", "deebert", "dact", "dpbert"]):
        model = randomise(make_model(method), seed=seed, scale=3.0 if method == "dpbert" else 1.0)
        model.config.threshold = {"deebert": 0.3, "dpbert": 0.5}.get(method)
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


def test_benchmark_writes_csv_table_chart_and_profile(checkpoints, glue_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    code = benchmark.main([
        "--task", "MRPC", "--checkpoints", str(checkpoints), "--data-dir", str(glue_dir), "--out", str(out),
        "--limit", "4", "--repeats", "1", "--warmup", "1", "--batch-sizes", "1,4", "--profile",
    ])
    assert code == 0, capsys.readouterr().err
    with (out / "results.csv").open() as handle:
        reader = csv.DictReader(handle)
        assert set(REQUIRED_COLUMNS) <= set(reader.fieldnames)
        rows = list(reader)

    measured = [row for row in rows if row["source"] == benchmark.MEASURED]
    expected_points = {("full", ""), ("dact", "")} | {(method, str(t)) for method in ("deebert", "dpbert") for t in SWEEPS[method]}
    assert sorted((row["method"], row["threshold"]) for row in measured) == sorted(expected_points)
    for row in measured:
        assert row["task"] == "MRPC" and row["metric"]
        for column in ("avg_layers", "expected_speedup", "measured_speedup", "overhead_ratio", "p50_ms", "p95_ms", "batched_speedup", "throughput_per_s"):
            assert float(row[column]) > 0, (row["method"], row["threshold"], column)
    shipped = {(row["method"], row["threshold"]) for row in measured if row["operating_point"] == "shipped"}
    assert shipped == {("full", ""), ("deebert", "0.3"), ("dact", ""), ("dpbert", "0.5")}

    quoted = [row for row in rows if row["source"] != benchmark.MEASURED]
    assert {row["method"] for row in quoted} == {"deebert", "dact", "dpbert"}
    assert all(row["source"] == benchmark.QUOTED and "not measured" in row["source"] and not row["measured_speedup"] for row in quoted)

    table = (out / "results.md").read_text()
    lines = table.splitlines()
    for method in ("deebert", "dpbert"):
        assert sum(line.startswith(f"| {method} |") for line in lines) == len(SWEEPS[method])
    assert "not measured" in table and "## Targets" in table and "torch_threads" in table
    for name in ("tradeoff.html", "tradeoff.png", "machine.json", "profile.txt"):
        assert (out / name).stat().st_size > 0, name


def test_missing_checkpoint_is_one_line_naming_the_folder(tmp_path, glue_dir, capsys):
    code = benchmark.main(["--task", "MRPC", "--checkpoints", str(tmp_path / "none"), "--data-dir", str(glue_dir)])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and str(tmp_path / "none" / "full") in error and "Traceback" not in error
