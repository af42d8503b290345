"""interpret/: attributions follow the trace's path, charts show what the trace says, the query log keeps every row,
reports.
"""

from __future__ import annotations

import ast
import json
import sqlite3
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import torch

from core.errors import UserError
from core.methods import METHODS
from core.trace import LayerStep
from interpret import charts
from interpret.attributions import PAIR_SEPARATOR, attribute, encode, replay
from interpret.querylog import QUERY_COLUMNS, RESULT_COLUMNS, QueryLog, parse_since, read_results
from interpret.report import CSV_FILE, HTML_FILE, JSON_FILE, export_report, summary_table
from interpret.report import main as report_main
from interpret.usage import layer_usage, precomputed_usage
from tests.conftest import SECOND, SENTENCES, randomise

# thresholds and head scales that make the tiny random models exit early / bypass layers on some inputs
PATH_SETTINGS = {
    "full": (None, 1.0),
    "deebert": (0.6, 1.0),
    "dact": (None, 1.0),
    "dpbert": (0.5, 3.0),
    "pabee": (1, 1.0),
}


@pytest.fixture
def varied_traces(make_model):
    """For each method: a model with random heads, and its traces on the shared sentence pairs."""

    def run(method: str, task: str = "MRPC"):
        threshold, scale = PATH_SETTINGS[method]
        model = randomise(make_model(method, task), seed=4, scale=scale)
        return model, model.predict(SENTENCES, SECOND, threshold=threshold, layer_values=True)

    return run


def answer_of(model, trace) -> torch.Tensor:
    if model.config.labels is None:
        return torch.tensor([trace.prediction])
    return torch.tensor([trace.probabilities[label] for label in model.config.labels])


@pytest.mark.parametrize(
    "method,task", [("full", "MRPC"), ("deebert", "MRPC"), ("dact", "MRPC"), ("dpbert", "MRPC"), ("dpbert", "STS-B")]
)
def test_replay_gives_the_answer_of_the_path_the_trace_took(varied_traces, method, task):
    model, traces = varied_traces(method, task)
    if method == "deebert":
        assert any(trace.exit_layer for trace in traces), "some inputs should exit early"
    if method == "dpbert":
        assert any(trace.layers_skipped for trace in traces), "some layers should be bypassed"
    for trace in traces:
        encoded = encode(model, trace)
        with torch.no_grad():
            embeddings = model.encoder.embed(encoded["input_ids"], encoded["token_type_ids"])
            got = replay(model, trace, embeddings, encoded["attention_mask"])
        assert got.reshape(-1) == pytest.approx(answer_of(model, trace), rel=1e-5, abs=1e-5)


def test_replay_of_an_early_exit_uses_the_exit_ramp_not_the_last_one(varied_traces):
    model, traces = varied_traces("deebert")
    trace = next(trace for trace in traces if trace.exit_layer and trace.exit_layer < trace.num_layers)
    every_layer = list(range(1, trace.num_layers + 1))
    full_path = replace(
        trace,
        exit_layer=None,
        layers_executed=every_layer,
        layers_not_reached=[],
        per_layer=[LayerStep(layer, executed=True, reached=True) for layer in every_layer],
    )
    encoded = encode(model, trace)
    with torch.no_grad():
        embeddings = model.encoder.embed(encoded["input_ids"], encoded["token_type_ids"])
        exited = replay(model, trace, embeddings, encoded["attention_mask"])
        ran_through = replay(model, full_path, embeddings, encoded["attention_mask"])
    assert not torch.allclose(exited, ran_through)


@pytest.mark.parametrize("method", ["deebert", "dact", "dpbert"])
def test_attribution_explains_the_given_answer_with_small_integration_error(varied_traces, method):
    model, traces = varied_traces(method)
    trace = traces[0]
    result = attribute(model, trace, steps=64)
    assert result.target == trace.prediction
    assert result.convergence_delta < 1e-2
    shown = "".join(token for token, _ in result.tokens)
    assert PAIR_SEPARATOR in shown
    assert "gorgeous" in shown and "charming" in shown
    scores = [score for _, score in result.tokens if score is not None]
    assert max(abs(score) for score in scores) == pytest.approx(1.0)


def test_attribution_of_a_regression_score(varied_traces):
    model, traces = varied_traces("dpbert", "STS-B")
    result = attribute(model, traces[1])
    assert result.target == "score"
    assert any(score for _, score in result.tokens if score is not None)


# --- charts -------------------------------------------------------------------------------
def chart_rows(chart, key: str) -> list[dict]:
    """All data rows of a (layered/concatenated) chart that have ``key``."""
    spec = chart.to_dict()
    return [row for rows in spec.get("datasets", {}).values() for row in rows if key in row]


def test_layer_path_chart_colours_every_cell_and_marks_the_exit(varied_traces):
    _, deebert_traces = varied_traces("deebert")
    _, dpbert_traces = varied_traces("dpbert")
    exiting = next(trace for trace in deebert_traces if trace.exit_layer and trace.exit_layer < trace.num_layers)
    skipping = next(trace for trace in dpbert_traces if trace.layers_skipped)
    chart = charts.layer_path_chart([exiting, skipping])
    cells = {(row["method"], row["layer"]): row["status"] for row in chart_rows(chart, "status")}
    assert len(cells) == 2 * exiting.num_layers
    assert cells[("DeeBERT", exiting.exit_layer + 1)] == "not reached (exited)"
    assert cells[("DPBERT", skipping.layers_skipped[0])] == "skipped (bypassed)"
    assert {"method": "DeeBERT", "layer": exiting.exit_layer, "mark": "exit ▶"} in chart_rows(chart, "mark")


def chart_series(chart, label: str) -> list[dict]:
    """The plotted rows of one series of a ``method_chart``, in layer order."""
    return sorted((row for row in chart_rows(chart, "series") if row["series"] == label), key=lambda row: row["layer"])


@pytest.mark.parametrize("method", [name for name, method in METHODS.items() if method.layer_chart is not None])
def test_every_method_chart_plots_exactly_the_trace_values(varied_traces, method):
    """Each declared series shows the trace's ``values`` for its field, one point per layer the input reached."""
    spec = METHODS[method].layer_chart
    _, traces = varied_traces(method)
    for trace in traces[:3]:
        chart = charts.method_chart(trace)
        assert chart is not None and spec.title in json.dumps(chart.to_dict()["title"])
        for series in spec.series:
            plotted = chart_series(chart, series.label)
            reached = [step for step in trace.per_layer if step.reached]
            assert plotted, f"{method}: nothing plotted for {series.field}"
            assert [row["layer"] for row in plotted] == [step.layer for step in reached]
            assert [row["value"] for row in plotted] == pytest.approx([step.values[series.field] for step in reached])


def test_a_method_without_a_layer_chart_gets_none(varied_traces):
    _, traces = varied_traces("full")
    assert METHODS["full"].layer_chart is None and charts.method_chart(traces[0]) is None


def test_method_charts_show_the_knob_the_exit_and_the_skipped_layers(varied_traces):
    _, deebert_traces = varied_traces("deebert")
    _, dact_traces = varied_traces("dact")
    _, dpbert_traces = varied_traces("dpbert")
    _, pabee_traces = varied_traces("pabee")
    trace = next(trace for trace in deebert_traces if trace.exit_layer and trace.exit_layer < trace.num_layers)
    entropy = charts.method_chart(trace)
    assert [row["value"] for row in chart_series(entropy, "entropy")] == pytest.approx(
        [step.values["entropy"] for step in trace.per_layer if step.reached]
    )
    assert (
        chart_series(entropy, "entropy")[-1]["value"]
        < 0.6
        <= min(row["value"] for row in chart_series(entropy, "entropy")[:-1])
    )  # exits at the first below S
    assert {"value": 0.6, "label": "S = 0.6"} in chart_rows(entropy, "label")
    assert {"layer": trace.exit_layer, "label": f"exit after layer {trace.exit_layer}"} in chart_rows(entropy, "label")

    trace = dact_traces[0]
    lower = chart_series(charts.method_chart(trace), "top class: lower bound")
    assert [row["value"] for row in lower] == pytest.approx(
        [step.values["top_lower_bound"] for step in trace.per_layer if step.reached]
    )
    assert not any(
        "S = " in row["label"] for row in chart_rows(charts.method_chart(trace), "label")
    )  # no knob, no rule

    trace = next(trace for trace in dpbert_traces if trace.layers_skipped)
    planner = chart_series(charts.method_chart(trace), "planner probability")
    assert {row["layer"] for row in planner if row["status"] == "skipped (bypassed)"} == set(trace.layers_skipped)
    assert all(row["value"] <= 0.5 for row in planner if row["status"] == "skipped (bypassed)")
    assert all(row["value"] > 0.5 for row in planner if row["status"] == "executed")

    trace = next(trace for trace in pabee_traces if trace.exit_layer and trace.exit_layer < trace.num_layers)
    patience = charts.method_chart(trace)
    agreeing = chart_series(patience, "agreeing in a row")
    assert agreeing[-1]["layer"] == trace.exit_layer and agreeing[-1]["value"] >= 1 > max(
        row["value"] for row in agreeing[:-1]
    )
    assert {"value": 1, "label": "patience t = 1"} in chart_rows(patience, "label")


# --- layer usage --------------------------------------------------------------------------
RECORDS = [
    {"task": "MRPC", "method": "deebert", "num_layers": 4, "layers_executed": [1, 2], "exit_layer": 2},
    {"task": "MRPC", "method": "deebert", "num_layers": 4, "layers_executed": [1, 2, 3, 4], "exit_layer": None},
    {"task": "MRPC", "method": "dpbert", "num_layers": 4, "layers_executed": [1, 3, 4], "exit_layer": None},
]


def test_layer_usage_counts_executions_and_exits():
    usage = layer_usage(RECORDS).set_index(["method", "layer"])
    assert usage.loc[("deebert", 3), "executed"] == 0.5
    assert (
        usage.loc[("deebert", 2), "exited"] == 0.5 and usage.loc[("deebert", 4), "exited"] == 0.0
    )  # ran to the end: no exit
    assert usage.loc[("dpbert", 2), "executed"] == 0.0 and usage.loc[("dpbert", 1), "executed"] == 1.0
    assert usage.loc[("dpbert", 4), "exited"] is None or usage["exited"].isna()[("dpbert", 4)]
    assert usage.loc[("deebert", 1), "inputs"] == 2


def test_precomputed_usage_reads_training_metrics(make_model):
    model = make_model("deebert")
    assert precomputed_usage(model) is None
    model.config.metrics = {"layer_frequency": [1.0, 0.8, 0.5, 0.2], "exit_frequency": [0.2, 0.3, 0.3, 0.2]}
    usage = precomputed_usage(model)
    assert usage["executed"].tolist() == [1.0, 0.8, 0.5, 0.2] and usage["exited"].tolist() == [0.2, 0.3, 0.3, 0.2]


ROOT = Path(__file__).resolve().parent.parent


def imported_packages(path: Path) -> set[str]:
    """The top-level packages a source file imports, anywhere in it (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_nothing_in_interpret_or_the_demo_imports_training():
    for path in [*sorted((ROOT / "interpret").glob("*.py")), ROOT / "app.py"]:
        assert "training" not in imported_packages(path), path.name


def test_only_interpret_charts_imports_altair():
    sources = [
        path
        for folder in ("core", "core/methods", "training", "interpret")
        for path in sorted((ROOT / folder).glob("*.py"))
    ] + [ROOT / "app.py"]
    assert [path.relative_to(ROOT).as_posix() for path in sources if "altair" in imported_packages(path)] == [
        "interpret/charts.py"
    ]


def test_metric_lines_draw_one_line_per_series_with_every_column_in_the_tooltip():
    frame = pd.DataFrame(
        {"avg_layers": [2.0, 3.0, 4.0], "metric": [0.7, 0.8, 0.85], "kind": ["sweep", "sweep", "full model"]}
    )
    spec = charts.metric_lines(
        frame, "avg_layers", "metric", "a sweep", series="kind", axis_titles=("average layers", "f1")
    ).to_dict()
    assert spec["encoding"]["color"]["field"] == "kind" and spec["encoding"]["x"]["title"] == "average layers"
    assert [item["field"] for item in spec["encoding"]["tooltip"]] == ["avg_layers", "metric", "kind"]
    single = charts.metric_lines(frame.drop(columns="kind"), "avg_layers", "metric", "one line").to_dict()
    assert single["encoding"]["color"] == {"value": "#2563eb"} and single["encoding"]["y"]["title"] == "metric"


def test_speedup_chart_draws_methods_as_lines_and_the_full_model_as_labelled_squares():
    points = pd.DataFrame(
        [
            {
                "method": "deebert",
                "precision": "fp32",
                "series": "deebert fp32",
                "threshold": 0.1,
                "operating_point": "sweep",
                "metric": 0.85,
            },
            {
                "method": "deebert",
                "precision": "fp32",
                "series": "deebert fp32",
                "threshold": 0.3,
                "operating_point": "shipped",
                "metric": 0.8,
            },
            {
                "method": "full",
                "precision": "int8",
                "series": "full int8",
                "threshold": None,
                "operating_point": "full",
                "metric": 0.86,
            },
        ]
    ).assign(metric_name="f1", measured_speedup=[1.2, 1.8, 2.0], reference=["full fp32", "full fp32", "full int8"])
    rules = pd.DataFrame({"metric": [0.84], "label": ["98% of full"]})
    spec = charts.speedup_chart(
        points, "measured_speedup", "speed-up (batch 1)", ["method", "metric"], rules, "MRPC"
    ).to_dict()
    marks = [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"] for layer in spec["layer"]]
    assert (
        marks == ["line", "point", "point", "text", "rule"]
        and spec["layer"][0]["encoding"]["x"]["scale"]["type"] == "log"
    )
    assert (
        len(charts.speedup_chart(points, "measured_speedup", "speed-up", ["method"], None, "MRPC").to_dict()["layer"])
        == 4
    )


# --- query log ----------------------------------------------------------------------------
def test_query_log_writes_one_row_per_method_in_wal_mode(tmp_path, varied_traces):
    _, traces = varied_traces("dpbert")
    log = QueryLog(tmp_path / "q.db")
    awkward = 'it\'s "quoted"; drop table queries; --'
    query_id = log.record("MRPC", awkward, "pair", {"thresholds": {"dpbert": 0.5}}, traces[:1], {"dpbert": False})
    log.close()
    assert query_id == 1 and log.enabled
    rows = read_results(tmp_path / "q.db")
    assert len(rows) == 1
    assert rows[0]["text"] == awkward and rows[0]["layers_executed"] == traces[0].layers_executed
    assert rows[0]["settings"] == {"thresholds": {"dpbert": 0.5}} and rows[0]["methods"] == ["dpbert"]
    with sqlite3.connect(tmp_path / "q.db") as connection:
        assert connection.execute("pragma journal_mode").fetchone()[0] == "wal"
        connection.row_factory = sqlite3.Row
        for table, declared in (("queries", QUERY_COLUMNS), ("results", RESULT_COLUMNS)):
            written = dict(connection.execute(f"select * from {table}").fetchone())
            assert list(written) == list(declared), f"{table} has exactly the declared columns, in order"
            nullable = {"exit_layer", "checkpoint"}  # no early exit on this input, no checkpoint for untrained heads
            assert [name for name, value in written.items() if value is None and name not in nullable] == [], (
                f"a {table} row fills every column"
            )
    shared = {"id", "query_id"}
    assert set(rows[0]) == {"query_id"} | (set(QUERY_COLUMNS) - shared) | (set(RESULT_COLUMNS) - shared), (
        "a read row holds every declared column"
    )


def test_query_log_keeps_every_row_from_many_threads(tmp_path, varied_traces):
    _, traces = varied_traces("deebert")
    log = QueryLog(tmp_path / "q.db")
    threads = [
        threading.Thread(target=log.record, args=("MRPC", f"query {i}", None, {}, traces[:3], {})) for i in range(50)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    rows = read_results(tmp_path / "q.db")
    assert len(rows) == 150 and len({row["query_id"] for row in rows}) == 50
    assert {row["text"] for row in rows} == {f"query {i}" for i in range(50)}


def test_unusable_database_turns_logging_off_without_failing(tmp_path, varied_traces):
    _, traces = varied_traces("full")
    log = QueryLog(tmp_path)  # a folder, not a file
    assert not log.enabled and "off" in log.status
    assert log.record("MRPC", "text", "pair", {}, traces[:1], {}) is None
    assert not log.enabled


def test_environment_switches_logging_off_and_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTIVE_BERT_QUERY_LOG", "off")
    log = QueryLog.from_env()
    assert not log.enabled and log.path is None and "ADAPTIVE_BERT_QUERY_LOG=off" in log.status
    monkeypatch.setenv("ADAPTIVE_BERT_QUERY_LOG", "on")
    monkeypatch.setenv("ADAPTIVE_BERT_QUERY_DB", str(tmp_path / "elsewhere.db"))
    log = QueryLog.from_env()
    assert log.enabled and log.path == tmp_path / "elsewhere.db" and log.path.is_file()


def test_parse_since_understands_dates_and_spans():
    assert parse_since("2025-01-31") == datetime(2025, 1, 31, tzinfo=UTC)
    assert abs(parse_since("7d") - (datetime.now(UTC) - timedelta(days=7))) < timedelta(minutes=1)
    assert parse_since("") is None
    with pytest.raises(UserError, match="24h"):
        parse_since("last tuesday")


# --- report -------------------------------------------------------------------------------
@pytest.fixture
def logged_db(tmp_path, varied_traces):
    _, mrpc = varied_traces("deebert")
    _, sts = varied_traces("dpbert", "STS-B")
    log = QueryLog(tmp_path / "q.db")
    for trace in mrpc[:3]:
        log.record("MRPC", trace.text, trace.text_pair, {}, [trace], {})
    for trace in sts[:2]:
        log.record("STS-B", trace.text, trace.text_pair, {}, [trace], {})
    log.close()
    return tmp_path / "q.db"


def test_report_command_writes_csv_json_and_a_self_contained_page(logged_db, tmp_path, capsys):
    out = tmp_path / "report"
    assert report_main(["--db", str(logged_db), "--out", str(out), "--task", "mrpc"]) == 0
    assert "3 rows" in capsys.readouterr().out
    rows = json.loads((out / JSON_FILE).read_text())
    assert len(rows) == 3 and {row["task"] for row in rows} == {"MRPC"}
    assert len((out / CSV_FILE).read_text().strip().splitlines()) == 1 + 3
    assert (out / CSV_FILE).read_text().splitlines()[0].split(",") == list(rows[0]), (
        "the CSV and the JSON hold the same columns"
    )
    page = (out / HTML_FILE).read_text()
    assert "<svg" in page and "<script" not in page and 'src="http' not in page
    assert "DeeBERT" in page and "STS-B" not in page


def test_report_summary_and_filters(logged_db, tmp_path):
    files = export_report(logged_db, tmp_path / "all", since="1h")
    assert files.rows == 5
    table = summary_table(read_results(logged_db)).set_index("task")
    assert table.loc["MRPC", "queries"] == 3 and table.loc["STS-B", "method"] == "DPBERT"
    empty = export_report(logged_db, tmp_path / "none", since="2999-01-01")
    assert empty.rows == 0 and empty.csv.read_text().splitlines()[0].split(",") == list(read_results(logged_db)[0]), (
        "an empty CSV still has its header"
    )


def test_report_command_explains_bad_arguments(tmp_path, capsys):
    assert report_main(["--db", str(tmp_path / "missing.db"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
