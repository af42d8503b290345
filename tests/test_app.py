"""The demo: handlers as plain functions, the API through gradio_client, 50 queries at once, and a headless browser."""

from __future__ import annotations

import csv
import html
import json
import math
import os
import re
import socket
import sqlite3
import statistics
import subprocess
import threading
import time
import types
from concurrent.futures import wait
from dataclasses import replace
from pathlib import Path

import gradio as gr
import httpx
import pandas as pd
import pytest
import torch
from gradio_client import Client

import app
from app import DemoComponents, DemoHandlers, build_demo, example_rows
from core.catalog import read_catalog
from core.checkpoint import SHIPPED_DIR
from core.heads import PooledHead
from core.methods import BASELINE, METHODS
from core.model import build_model
from interpret.compare import CHART_METHODS, MAX_CHARS, REPEATS, ModelCache, knob_settings, public_checkpoint
from interpret.querylog import QueryLog, read_results
from interpret.render import result_card
from interpret.report import SUMMARY_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ALL_METHODS = list(METHODS)
KNOBS = {"deebert": 0.3, "dpbert": 0.5, "pabee": 3}
DEV_METRICS = {"layer_frequency": [1.0, 0.75, 0.5, 0.25], "exit_frequency": [0.25, 0.25, 0.25, 0.25]}
# shipped operating points that differ by task, as the real checkpoints' do (MRPC's DPBERT 0.6, SST-2's 0.3)
SHIPPED = read_catalog(
    SHIPPED_DIR
)  # the tasks and methods the demo serves by default; the tests' models are tiny ones of them
SHIPPED_TASKS = list(SHIPPED)
SHIPPED_THRESHOLDS = {
    "SST-2": {"deebert": 0.2, "dpbert": 0.3, "pabee": 1.0},
    "MRPC": {"deebert": 0.5, "dpbert": 0.6, "pabee": 2.0},
}


def tiny_loader(backbone: str):
    """Untrained heads on the tiny backbone, with dev-set usage recorded as training records it (exit shares only for
    methods that exit early) and per-task shipped thresholds."""

    def load(task: str, method: str):
        torch.manual_seed(0)
        model = build_model(method, task, backbone=backbone).eval()
        model.config.metrics = {
            key: value for key, value in DEV_METRICS.items() if key != "exit_frequency" or model.method.exits_early
        }
        model.config.threshold = SHIPPED_THRESHOLDS.get(task, {}).get(method)
        return model

    return load


def strict_json(text: str):
    """``json.loads`` that refuses NaN and Infinity, as a browser's ``JSON.parse`` does."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def value(shown):
    """A widget's value in a handler's answer: ``compare`` wraps the charts it shows or hides in ``gr.update``."""
    return shown.get("value") if is_update(shown) else shown


def visible(shown) -> bool | None:
    """Whether a handler's answer shows the widget (None: it leaves the visibility as it is)."""
    return shown.get("visible") if is_update(shown) else None


def is_update(shown) -> bool:
    return isinstance(shown, dict) and shown.get("__type__") == "update"


def charts(ui: DemoComponents, out: dict) -> dict:
    """The per-method charts of a ``compare`` answer, by method."""
    return {method: value(out[chart]) for method, chart in ui.method_charts.items()}


def visibility(ui: DemoComponents, out: dict) -> dict:
    """Per method: whether a ``compare`` answer shows its chart."""
    return {method: visible(out[chart]) for method, chart in ui.method_charts.items()}


def built(handlers: DemoHandlers) -> DemoHandlers:
    """The handlers with their widgets (``build_demo`` lays them out and hands them over)."""
    build_demo(handlers)
    return handlers


@pytest.fixture
def handlers(tiny_backbone, tmp_path) -> DemoHandlers:
    return built(
        DemoHandlers(
            ModelCache(SHIPPED, tiny_loader(tiny_backbone)), QueryLog(tmp_path / "queries.db"), export_root=tmp_path
        )
    )


def knob_values(handlers: DemoHandlers, knobs: dict) -> list:
    """The slider values in the order ``compare`` takes them (None: the model's default)."""
    return [knobs.get(method) for method in handlers.knob_methods]


def compare(
    handlers: DemoHandlers,
    task="MRPC",
    text="the cat sat on the mat",
    pair="a cat was sitting on the mat",
    methods=ALL_METHODS,
    knobs=KNOBS,
    precision="fp32",
) -> dict:
    return handlers.compare(task, text, pair, methods, precision, *knob_values(handlers, knobs))


def api_answer(widgets: list, returned: tuple | list) -> dict:
    """What an API endpoint returned, keyed by its output widgets.

    The API returns neither states nor layout blocks.
    """
    return dict(zip([widget for widget in widgets if not widget.skip_api], returned, strict=True))


def page(handlers: DemoHandlers, **query_params: str) -> dict:
    """``open_page`` as a visitor arriving at ``/?name=value...`` sees it."""
    return handlers.open_page(types.SimpleNamespace(query_params=query_params))


def logged(handlers: DemoHandlers) -> list[dict]:
    return read_results(handlers.query_log.path) if handlers.query_log.path.is_file() else []


# --- handlers as functions ----------------------------------------------------------------
def test_compare_shows_every_method_and_logs_one_row_per_method(handlers):
    ui = handlers.components
    out = compare(handlers)
    for method in ALL_METHODS:
        assert f'data-method="{method}"' in out[ui.cards]
    assert "speed-up vs full" in out[ui.cards] and "layers executed" in out[ui.cards]
    assert "Untrained heads" in out[ui.message]
    assert [trace["method"] for trace in out[ui.traces_json]] == ALL_METHODS
    assert set(CHART_METHODS) == {"deebert", "dact", "dpbert", "pabee"}
    assert all(charts(ui, out)[method] is not None for method in CHART_METHODS)
    assert [trace["threshold"] for trace in out[ui.traces_json] if trace["method"] in KNOBS] == [
        KNOBS[trace["method"]] for trace in out[ui.traces_json] if trace["method"] in KNOBS
    ]
    rows = logged(handlers)
    assert sorted(row["method"] for row in rows) == sorted(ALL_METHODS) and len({row["query_id"] for row in rows}) == 1
    assert rows[0]["text_pair"] == "a cat was sitting on the mat"
    assert out[ui.log_status] == "query log: on"


def test_speed_up_baseline_runs_but_is_neither_shown_nor_logged(handlers):
    ui = handlers.components
    out = compare(handlers, methods=["dpbert"])
    assert 'data-method="full"' not in out[ui.cards] and "measured" in out[ui.cards] and "n/a" not in out[ui.cards]
    assert "full model was also run" in out[ui.message]
    assert [row["method"] for row in logged(handlers)] == ["dpbert"]
    assert {method for method, chart in charts(ui, out).items() if chart is not None} == {"dpbert"}


def test_int8_runs_every_method_and_both_baselines_and_is_recorded(handlers):
    ui = handlers.components
    out = compare(handlers, methods=["deebert", "dpbert"], precision="int8")
    assert [trace["precision"] for trace in out[ui.traces_json]] == ["int8", "int8"]
    assert (
        out[ui.cards].count("speed-up vs full in int8") == 2 and out[ui.cards].count("speed-up vs full in fp32") == 2
    )
    assert "also ran in fp32" in out[ui.message]
    assert all(row["settings"]["precision"] == "int8" for row in logged(handlers)) and len(logged(handlers)) == 2
    cached = {key: model for key, model in handlers.models._models.items() if key[:2] == ("MRPC", "full")}
    assert {key[2]: model.precision for key, model in cached.items()} == {"fp32": "fp32", "int8": "int8"}
    assert cached["MRPC", "full", "int8"].encoder is not cached["MRPC", "full", "fp32"].encoder, (
        "int8 is a converted copy, fp32 stays as loaded"
    )
    explained = handlers.explain("dpbert", out[ui.traces_state])
    assert explained[ui.attribution] and "fp32 model along the int8 run's path" in html.unescape(
        explained[ui.attribution_note]
    )


def test_fastest_runs_each_checkpoint_in_its_own_recorded_choice_and_says_what_it_costs(handlers):
    ui = handlers.components
    int8_keeps = {"precisions": {"int8": {"keeps": True, "agreement": 0.985}, "onnx-int8": {"keeps": False}}}
    for method, point in {"full": int8_keeps, "deebert": int8_keeps, "dpbert": {"precisions": {"int8": {}}}}.items():
        handlers.models.get("MRPC", method).config.operating_point = point
    out = compare(handlers, methods=["deebert", "dpbert"], precision="fastest")
    assert [trace["precision"] for trace in out[ui.traces_json]] == ["int8", "fp32"]
    assert out[ui.cards].count("speed-up vs full in int8") == 2, "both are compared with the full model's own choice"
    message = html.unescape(out[ui.message])
    assert "DeeBERT int8 (answers 98.5% of validation inputs as fp32 does)" in message
    assert "DPBERT fp32 (no faster precision keeps the validation metric)" in message
    assert "also ran in fp32" in message
    assert [row["settings"]["precision"] for row in logged(handlers)] == ["fastest", "fastest"]


def test_fp32_shows_no_second_baseline_and_an_unknown_precision_is_a_message(handlers):
    ui = handlers.components
    out = compare(handlers, methods=["dpbert"])
    assert "speed-up vs full in fp32" not in out[ui.cards] and out[ui.traces_json][0]["precision"] == "fp32"
    out = compare(handlers, methods=["dpbert"], precision="int4")
    assert (
        "unknown precision 'int4'" in html.unescape(out[ui.message])
        and out[ui.cards] == ""
        and not logged(handlers)[1:]
    )


def test_a_regression_task_charts_only_the_chosen_methods_that_can_run_it(handlers):
    ui = handlers.components
    out = compare(handlers, task="STS-B", methods=["full", "dpbert"])
    assert charts(ui, out)["deebert"] is None and charts(ui, out)["dact"] is None  # classification only
    assert charts(ui, out)["pabee"] is None  # can run STS-B, but was not chosen
    assert visibility(ui, out) == {method: method == "dpbert" for method in CHART_METHODS}, (
        "a chart that does not apply is hidden, not an empty box"
    )
    chart = charts(ui, out)["dpbert"].to_dict()
    assert "DPBERT" in json.dumps(chart["title"]) and [trace["method"] for trace in out[ui.traces_json]] == [
        "full",
        "dpbert",
    ]
    out = compare(handlers, task="STS-B", methods=["pabee", "dpbert"])
    assert {method for method, chart in charts(ui, out).items() if chart is not None} == {"pabee", "dpbert"}
    assert {method for method, visible in visibility(ui, out).items() if visible} == {"pabee", "dpbert"}
    assert out[ui.traces_json][0]["probabilities"] == {} and isinstance(out[ui.traces_json][0]["prediction"], float)
    out = compare(handlers, task="MRPC", methods=ALL_METHODS)
    assert all(visibility(ui, out).values())
    out = compare(handlers, task="MRPC", text="   ")
    assert not any(visibility(ui, out).values()), "after an error no chart box is left standing"


def test_task_change_offers_the_task_methods_and_the_second_box_only_for_pairs(handlers):
    ui = handlers.components
    assert handlers.knob_methods == [
        "deebert",
        "dpbert",
        "pabee",
    ]  # the methods whose model has a knob, in METHODS order
    changed = handlers.task_changed("STS-B")
    pair, methods = changed[ui.text_pair], changed[ui.methods]
    deebert, dpbert, pabee = (changed[ui.knobs[method]] for method in handlers.knob_methods)
    assert pair["visible"] is True and "value" not in pair and methods["value"] == ["full", "dpbert", "pabee"]
    assert (
        deebert["visible"] is False
        and dpbert["visible"] is True
        and dpbert["maximum"] == 1.0
        and dpbert["value"] == 0.5
    )
    assert pabee["visible"] is True and (pabee["minimum"], pabee["maximum"], pabee["step"], pabee["value"]) == (
        1,
        3,
        1,
        3,
    )  # 4 tiny layers
    assert "PABEE" in pabee["label"] and "patience" in pabee["label"] and pabee["info"]
    changed = handlers.task_changed("SST-2")
    pair, methods, deebert = changed[ui.text_pair], changed[ui.methods], changed[ui.knobs["deebert"]]
    assert (
        pair["visible"] is False and pair["value"] == "" and methods["value"] == ALL_METHODS
    )  # a hidden second sentence is never sent
    assert deebert["maximum"] == pytest.approx(0.6931, abs=1e-4) and deebert["maximum"] <= math.log(2)
    assert deebert["value"] == SHIPPED_THRESHOLDS["SST-2"]["deebert"]
    assert "DeeBERT" in deebert["label"] and "entropy" in deebert["label"]
    assert handlers.models.methods_for("rte") == ALL_METHODS


@pytest.mark.parametrize("task", ["SST-2", "MRPC", "STS-B"])
def test_every_slider_stays_inside_its_knob_range(handlers, task):
    for method in handlers.knob_methods:
        settings = knob_settings(handlers.models, task, method)
        if not settings["visible"]:
            assert not METHODS[method].supports(task == "STS-B")
            continue
        knob = handlers.models.get(task, method).method.knob
        assert knob.low <= settings["minimum"] <= settings["value"] <= settings["maximum"] <= knob.high
        assert settings["step"] == knob.step


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"text": ""}, "the text is empty"),
        ({"text": " \n\t "}, "the text is empty"),
        ({"pair": "   "}, "type the second sentence"),
        ({"methods": []}, "choose at least one method"),
        ({"task": "STS-B", "methods": ["deebert"]}, "DeeBERT cannot run STS-B"),
        ({"knobs": {"deebert": 5.0}}, "out of range"),
        ({"knobs": {"pabee": 1.5}}, "whole number"),
        ({"task": "NOPE"}, "unknown task"),
    ],
)
def test_bad_input_gets_a_message_and_nothing_is_logged(handlers, change, expected):
    ui = handlers.components
    out = compare(handlers, **change)
    assert "Error:" in out[ui.message] and expected in out[ui.message]
    assert out[ui.cards] == "" and out[ui.traces_json] == [] and value(out[ui.path_chart]) is None
    assert all(chart is None for chart in charts(ui, out).values())
    assert logged(handlers) == []


def test_control_characters_are_replaced_by_spaces_and_said_so(handlers):
    ui = handlers.components
    out = compare(handlers, text="good\x00film\x1b", pair="fine\x07")
    assert "text: replaced 2 control character(s) with spaces" in out[ui.message]
    assert "second sentence: replaced 1 control character(s) with spaces" in out[ui.message]
    assert logged(handlers)[0]["text"] == "good film " and 'data-method="dact"' in out[ui.cards]


def test_markup_is_shown_escaped_never_rendered(handlers):
    ui = handlers.components
    out = compare(handlers, text="<script>alert('x')</script> <b>nice</b> &amp; fine")
    assert "<script>" not in out[ui.cards] and "&lt;script&gt;" in out[ui.cards]
    assert "contains markup" in out[ui.message]
    assert logged(handlers)[0]["text"].startswith("<script>")  # the log keeps the text as typed


def test_overlong_text_is_truncated_and_said_so(handlers):
    ui = handlers.components
    out = compare(handlers, text="word " * 400)
    assert "longer than the model's limit of 128 tokens" in html.unescape(out[ui.message])
    assert all(trace["truncated"] for trace in out[ui.traces_json])
    out = compare(handlers, text="x" * (MAX_CHARS + 50))
    assert f"only the first {MAX_CHARS:,} were kept" in out[ui.message]


def test_the_app_keeps_answering_when_the_log_cannot_be_written(tiny_backbone, tmp_path):
    broken = built(
        DemoHandlers(ModelCache(SHIPPED, tiny_loader(tiny_backbone)), QueryLog(tmp_path))
    )  # a folder is no database
    ui, out = broken.components, compare(broken)
    assert 'data-method="full"' in out[ui.cards]
    assert "query log: off" in out[ui.log_status] and str(tmp_path) not in out[ui.log_status]
    usage = broken.logged_layer_usage("any", "any", "")
    assert "query log: off" in usage[ui.log_note] and visible(usage[ui.log_view]) is False


def test_logging_switched_off_is_shown(tiny_backbone, monkeypatch):
    monkeypatch.setenv("ADAPTIVE_BERT_QUERY_LOG", "off")
    off = built(DemoHandlers(ModelCache(SHIPPED, tiny_loader(tiny_backbone)), QueryLog.from_env()))
    ui, out = off.components, compare(off)
    assert 'data-method="dpbert"' in out[ui.cards] and "query log: off (switched off" in out[ui.log_status]
    exported = off.export("any", "")
    assert exported[ui.export_files] is None and "switched off" in exported[ui.log_note]


def test_model_cache_loads_each_model_once_and_warms_it_up(tiny_backbone):
    loads, load = [], tiny_loader(tiny_backbone)

    def counting(task, method):
        loads.append((task, method))
        model = load(task, method)
        model.warmed = []
        model.predict = lambda *args, _model=model, _predict=model.predict, **kwargs: (
            _model.warmed.append(args),
            _predict(*args, **kwargs),
        )[1]
        return model

    cache = ModelCache(SHIPPED, counting)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("mrpc", "dpbert"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == [("MRPC", "dpbert")] and all(model is got[0] for model in got)
    assert got[0].warmed == [("warm up", "warm up")]


def test_explain_follows_the_method_answer(handlers):
    ui = handlers.components
    explained = handlers.explain("dact", {})
    assert explained[ui.attribution] == [] and "run a comparison first" in explained[ui.attribution_note]
    out = compare(handlers)
    explained = handlers.explain("deebert", out[ui.traces_state])
    message = explained[ui.attribution_note]
    assert "cat" in "".join(token for token, _ in explained[ui.attribution])
    assert "DeeBERT" in message and f"'{out[ui.traces_state]['deebert'].prediction}'" in html.unescape(message)


def test_open_page_runs_the_example_named_in_the_address(handlers):
    ui = handlers.components
    out = page(handlers, example="4")
    task, text, pair = example_rows(SHIPPED_TASKS)[3]
    assert [out[ui.task], out[ui.text], out[ui.text_pair]] == [task, text, pair]
    assert out[ui.cards].count("result-card") == len(SHIPPED[task].methods)
    assert {method for method, chart in charts(ui, out).items() if chart is not None} == set(
        SHIPPED[task].methods
    ) & set(CHART_METHODS)
    assert ui.tabs not in out and ui.log_chart not in out, "a link to an example leaves the Layer usage tab alone"
    assert {row["settings"]["precision"] for row in logged(handlers)} == {"fastest"}, (
        "the example runs at the precision the page shows selected"
    )
    untouched = page(handlers, example="999")
    assert "there is no example" in untouched[ui.message] and set(untouched) == {ui.message, ui.log_status}, (
        "nothing else on the page changes"
    )
    assert set(page(handlers)) == {ui.log_status}, "a plain visit only refreshes the log status"


def test_open_page_can_open_the_layer_usage_tab_on_a_task(handlers):
    ui = handlers.components
    out = page(handlers, usage="rte")
    assert out[ui.tabs].selected == "usage" and out[ui.dev_task] == "RTE" and out[ui.dev_note] == ""
    assert "RTE: layer usage on the dev set" in out[ui.dev_chart].to_json()
    assert "no queries logged yet" in out[ui.log_note], "the logged-queries part of the tab says what the log holds"
    out = page(handlers, usage="CoLA")
    assert (
        out[ui.dev_chart] is None
        and "unknown task 'CoLA'" in html.unescape(out[ui.dev_note])
        and ui.dev_task not in out
    )


def test_opening_the_layer_usage_tab_shows_what_the_log_holds(handlers):
    """The tab (its select event, or a ?usage= link) fills the logged-queries chart and summary with the log as it is:
    while the log is empty both are hidden (no table of placeholder headers) and the note says so."""
    ui = handlers.components
    for opened in (handlers.logged_layer_usage("any", "any", ""), page(handlers, usage="MRPC")):
        assert visible(opened[ui.log_view]) is False and opened[ui.log_chart] is None and opened[ui.log_summary].empty
        assert "no queries logged yet" in opened[ui.log_note]
    compare(handlers)
    for opened in (handlers.logged_layer_usage("any", "any", ""), page(handlers, usage="MRPC")):
        assert visible(opened[ui.log_view]) is True and "MRPC: layer usage over 1 logged queries" in json.dumps(
            opened[ui.log_chart].to_dict()
        )
        summary = opened[ui.log_summary]
        assert list(summary.columns) == SUMMARY_COLUMNS and summary["queries"].tolist() == [1] * len(ALL_METHODS)
        assert f"{len(ALL_METHODS)} logged results" in opened[ui.log_note]
    filtered = handlers.logged_layer_usage("SST-2", "any", "")
    assert visible(filtered[ui.log_view]) is False and "no logged queries match these filters" in filtered[ui.log_note]
    linked = page(handlers, usage="sst2")
    assert linked[ui.log_task] == "SST-2", "a ?usage= link filters the logged queries to its task"
    assert visible(linked[ui.log_view]) is False and "no logged queries match these filters" in linked[ui.log_note]
    assert page(handlers, usage="MRPC")[ui.log_task] == "MRPC"


def test_the_layer_usage_tab_asks_for_the_logged_usage_whenever_it_opens(handlers):
    demo = build_demo(handlers)
    ui = handlers.components
    tab = next(block for block in demo.blocks.values() if isinstance(block, gr.Tab) and block.id == app.USAGE_TAB)
    on_open = [event for event in demo.fns.values() if (tab._id, "select") in event.targets]
    assert [event.fn for event in on_open] == [handlers.logged_layer_usage]
    assert set(on_open[0].outputs) == set(ui.logged_usage_outputs) and ui.log_view in on_open[0].outputs


def test_dev_layer_usage_uses_the_recorded_frequencies(handlers):
    ui = handlers.components
    out = handlers.dev_layer_usage("MRPC")
    bars = [row for rows in out[ui.dev_chart].to_dict()["datasets"].values() for row in rows if "executed" in row]
    assert out[ui.dev_note] == ""  # every method's usage was recorded at training time: nothing to note
    assert {row["method"] for row in bars} == {"Full model", "DeeBERT", "DACT-BERT", "DPBERT", "PABEE"}
    assert sorted({row["executed"] for row in bars}) == sorted(DEV_METRICS["layer_frequency"])


def test_dev_layer_usage_shows_what_each_layer_knows_where_a_probe_was_committed(handlers, tmp_path, monkeypatch):
    from interpret import probes

    ui = handlers.components
    monkeypatch.setattr(probes, "PROBES_DIR", tmp_path)
    assert visible(handlers.dev_layer_usage("MRPC")[ui.probe_chart]) is False, "no probe committed: no empty chart"
    (tmp_path / "mrpc-probe").mkdir()
    rows = [
        {
            "model": "backbone",
            "layer": layer,
            "pooling": pooling,
            "metric_name": "accuracy",
            "metric": 0.6 + 0.01 * layer,
            "majority_share": 0.68,
        }
        for layer in range(5)
        for pooling in ("cls", "mean")
    ]
    pd.DataFrame(rows).to_csv(tmp_path / "mrpc-probe" / "results.csv", index=False)
    shown_chart = handlers.dev_layer_usage("MRPC")[ui.probe_chart]
    assert visible(shown_chart) is True
    plotted = [row for rows in value(shown_chart).to_dict()["datasets"].values() for row in rows if "pooling" in row]
    assert {(row["pooling"], row["layer"]) for row in plotted} == {(row["pooling"], row["layer"]) for row in rows}


def test_logged_layer_usage_filters_and_export_writes_the_report(handlers):
    ui = handlers.components
    compare(handlers)
    compare(handlers, task="SST-2", text="a fine film", pair="", methods=["deebert", "dpbert"])
    out = handlers.logged_layer_usage("SST-2", "any", "24h")
    table = out[ui.log_summary]
    assert table["queries"].tolist() == [1, 1] and set(table["method"]) == {"DeeBERT", "DPBERT"}
    assert "2 logged results" in out[ui.log_note] and "SST-2" in json.dumps(out[ui.log_chart].to_dict())
    table = handlers.logged_layer_usage("any", "dact", "")[ui.log_summary]
    assert table["method"].tolist() == ["DACT-BERT"]
    files = handlers.export("any", "")[ui.export_files]
    assert [Path(file).name for file in files] == ["queries.csv", "queries.json", "report.html"]
    assert len(json.loads(Path(files[1]).read_text())) == len(ALL_METHODS) + 2


@pytest.mark.parametrize(
    "source", ["app.py", *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "interpret").glob("*.py"))]
)
def test_the_demo_names_no_method(source):
    """Method-specific widgets come from METHODS: no method name (but the baseline's) is written out as a string."""
    names = "|".join(re.escape(name) for name in METHODS if name != BASELINE)
    found = re.findall(rf"""(["'])({names})\1""", (ROOT / source).read_text(encoding="utf-8"))
    assert found == [], f"{source} names methods: {sorted({name for _, name in found})}"


@pytest.mark.parametrize("task", SHIPPED_TASKS)
def test_every_chart_is_strict_json_for_every_task(handlers, task):
    """A browser's JSON.parse refuses NaN.

    Every chart the handlers return must parse strictly, or the user sees an empty box.
    """
    ui = handlers.components
    out = compare(
        handlers,
        task=task,
        pair="a cat was sitting on the mat" if task != "SST-2" else "",
        methods=SHIPPED[task].methods,
    )
    drawn = [value(out[ui.path_chart]), *[chart for chart in charts(ui, out).values() if chart is not None]]
    assert len(drawn) == 1 + len(set(SHIPPED[task].methods) & set(CHART_METHODS))
    dev_chart = handlers.dev_layer_usage(task)[ui.dev_chart]
    logged_chart = handlers.logged_layer_usage(task, "any", "")[ui.log_chart]
    for chart in [*drawn, dev_chart, logged_chart]:
        spec = strict_json(chart.to_json())
        assert spec.get("datasets"), "a chart without data"


def test_an_omitted_threshold_means_the_task_checkpoint_default(handlers):
    ui = handlers.components
    for task in ("MRPC", "SST-2"):
        out = compare(handlers, task=task, pair="a cat" if task == "MRPC" else "", knobs={})
        got = {
            trace["method"]: trace["threshold"]
            for trace in out[ui.traces_json]
            if trace["method"] in handlers.knob_methods
        }
        assert got == SHIPPED_THRESHOLDS[task]


def counting_loader(backbone: str, calls: list):
    """``tiny_loader`` whose models record every prediction (method, latency) but the warm-up."""
    load = tiny_loader(backbone)

    def counting(task, method):
        model = load(task, method)
        predict = model.predict

        def recorded(*args, **kwargs):
            traces = predict(*args, **kwargs)
            if args[0] != "warm up":
                calls.append((method, traces[0].latency_ms))
            return traces

        model.predict = recorded
        return model

    return counting


def test_latency_is_the_median_of_several_interleaved_runs(tiny_backbone, tmp_path):
    calls = []
    counted = built(
        DemoHandlers(ModelCache(SHIPPED, counting_loader(tiny_backbone, calls)), QueryLog(None), export_root=tmp_path)
    )
    ui, out = counted.components, compare(counted, methods=["full", "dpbert"])
    runs = {method: [latency for name, latency in calls if name == method] for method in ("full", "dpbert")}
    assert REPEATS >= 3 and all(len(latencies) == REPEATS for latencies in runs.values())
    assert [trace["latency_ms"] for trace in out[ui.traces_json]] == pytest.approx(
        [statistics.median(runs["full"]), statistics.median(runs["dpbert"])]
    )
    assert [name for name, _ in calls[:4]] == ["full", "dpbert", "dpbert", "full"], (
        "the order alternates, so neither always runs first"
    )
    assert f"median of {REPEATS} runs" in out[ui.cards]


def test_no_card_shows_a_measured_speed_up_above_the_layer_bound_without_saying_why(handlers):
    ui = handlers.components
    trace = compare(handlers, methods=["dpbert"])[ui.traces_state]["dpbert"]
    bound = replace(trace, expected_speedup=1.5, latency_ms=10.0)
    above, below = (
        result_card(bound, True, baseline_latency_ms=22.2, runs=5),
        result_card(bound, True, baseline_latency_ms=12.0, runs=5),
    )
    assert "2.22× measured" in above and "above the 1.50× its layer count allows" in above and "timing noise" in above
    assert "1.20× measured" in below and "above the" not in below
    assert "median of 5 runs" in above and "noisy sample" in result_card(bound, True, 22.2, runs=1)
    for _ in range(3):  # whatever the timings of real runs, every card that measures above its bound says why
        for card in compare(handlers)[ui.cards].split('class="result-card"')[1:]:
            measured, layers = map(float, re.search(r"([\d.]+)× measured, ([\d.]+)× in layers", card).groups())
            assert (measured > layers) == ("above the" in card), card


def shifted_regression_loader(backbone: str, bias: float):
    """``tiny_loader`` whose heads answer far below 0, as an untrained regression head can."""
    load = tiny_loader(backbone)

    def shifted(task, method):
        model = load(task, method)
        with torch.no_grad():
            for module in model.method.modules():
                if isinstance(module, PooledHead):
                    module.out.bias.fill_(bias)
        return model

    return shifted


def test_a_regression_score_shows_its_scale_and_is_flagged_when_outside_it(tiny_backbone, tmp_path):
    low = built(
        DemoHandlers(
            ModelCache(SHIPPED, shifted_regression_loader(tiny_backbone, -3.0)), QueryLog(None), export_root=tmp_path
        )
    )
    ui, out = low.components, compare(low, task="STS-B", methods=["full", "dpbert"])
    assert out[ui.cards].count("on the 0–5 scale (0: unrelated, 5: same meaning)") == 2
    assert out[ui.cards].count("score 0.00") == 2 and out[ui.cards].count("outside the scale: shown clipped") == 2
    assert all(trace["prediction"] < 0 for trace in out[ui.traces_json]), "the trace keeps the model's own output"
    assert "DPBERT answered -" in out[ui.message] and "outside STS-B's 0–5 scale" in html.unescape(out[ui.message])
    assert "(0.00 of 5 (clipped))" in json.dumps(charts(ui, out)["dpbert"].to_dict()["title"])
    plain = built(
        DemoHandlers(
            ModelCache(SHIPPED, shifted_regression_loader(tiny_backbone, 2.5)), QueryLog(None), export_root=tmp_path
        )
    )
    ui, out = plain.components, compare(plain, task="STS-B", methods=["full"])
    assert "on the 0–5 scale" in out[ui.cards] and "clipped" not in out[ui.cards] and "outside" not in out[ui.message]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("😀😀🎉", "no letters or digits, only punctuation, symbols or emoji"),
        ("ok 😀 🎉 🙈 🤖", "unknown to the model's vocabulary ([UNK]"),
        ("مرحبا بالعالم", "not in the Latin script"),
        ("שלום עולם", "not in the Latin script"),
        ("!!! ??? ... ¿¡ --", "no letters or digits"),
    ],
)
def test_input_the_model_can_hardly_read_gets_a_note(handlers, text, expected):
    ui = handlers.components
    out = compare(handlers, task="SST-2", text=text, pair="")
    assert expected in html.unescape(out[ui.message]) and out[ui.cards].count("result-card") == len(ALL_METHODS)


def test_ordinary_input_gets_no_reading_note_and_invisible_input_is_refused(handlers):
    ui = handlers.components
    out = compare(handlers, task="SST-2", text="A gorgeous, witty, seductive movie. Naïve café!", pair="")
    assert not any(note in out[ui.message] for note in ("vocabulary", "Latin script", "no letters"))
    out = compare(handlers, task="SST-2", text="\u200b\u200d\ufeff\u2060", pair="")
    assert "Error:" in out[ui.message] and "invisible characters" in out[ui.message] and out[ui.traces_json] == []
    out = compare(handlers, task="MRPC", text="fine", pair="\u200b\u200b")
    assert "type the second sentence" in out[ui.message] and len(logged(handlers)) == len(ALL_METHODS), (
        "only the first query was logged"
    )


def test_a_second_sentence_for_a_single_sentence_task_is_refused(handlers):
    ui = handlers.components
    out = compare(handlers, task="SST-2", text="a fine film", pair="an extra sentence")
    assert (
        "SST-2 takes a single sentence, but a second sentence was given" in out[ui.message]
        and out[ui.traces_json] == []
    )
    assert logged(handlers) == []
    assert compare(handlers, task="SST-2", text="a fine film", pair="  ")[ui.traces_json], (
        "an empty box is no second sentence"
    )


def test_checkpoints_are_named_relative_to_the_project():
    assert public_checkpoint(str(SHIPPED_DIR / "mrpc" / "dpbert")) == "assets/checkpoints/mrpc/dpbert"
    assert public_checkpoint("/srv/private/runs/mrpc/dpbert") == "dpbert"
    assert public_checkpoint(None) is None


def test_visitors_never_see_the_server_paths(tiny_backbone, tmp_path, monkeypatch):
    import training.data

    monkeypatch.setattr(training.data, "DEFAULT_DATA_DIR", tmp_path / "no-glue-here")
    undocumented = tiny_loader(tiny_backbone)

    def load(task, method):  # PABEE ships without recorded dev-set usage, so the demo would run the dev set
        model = undocumented(task, method)
        model.config.metrics = {} if method == "pabee" else model.config.metrics
        return model

    for log in (QueryLog(tmp_path / "queries.db"), QueryLog(tmp_path), QueryLog(tmp_path / "later.db")):
        visitor = built(DemoHandlers(ModelCache(SHIPPED, load), log, export_root=tmp_path))
        ui = visitor.components
        if log.path.name == "later.db":
            log.path.unlink()  # the file went away after the log opened it
        out = compare(visitor)
        shown = [out[ui.log_status], out[ui.message], out[ui.cards], json.dumps(out[ui.traces_json])]
        shown += [
            visitor.logged_layer_usage("any", "any", "")[ui.log_note],
            visitor.export("any", "")[ui.log_note],
            visitor.dev_layer_usage("MRPC")[ui.dev_note],
        ]
        shown += [visitor.logged_layer_usage("any", "any", "last tuesday")[ui.log_note]]
        for text in shown:
            assert str(tmp_path) not in text and "/tmp" not in text, text
        assert "PABEE: its checkpoint records no dev-set layer usage" in shown[-2]
    (tmp_path / "queries.db").write_bytes(b"not a database at all" * 100)
    damaged = built(DemoHandlers(ModelCache(SHIPPED, load), QueryLog(tmp_path / "other.db"), export_root=tmp_path))
    damaged.query_log.path = tmp_path / "queries.db"
    message = damaged.logged_layer_usage("any", "any", "")[damaged.components.log_note]
    assert "cannot be read" in message and str(tmp_path) not in message


def test_exports_are_written_safely_and_old_ones_cleaned_up(handlers, monkeypatch):
    ui = handlers.components
    hostile = ['=HYPERLINK("http://evil.example","click")', "+1+2", "-2+3", "@SUM(A1)", "\tstarts with a tab"]
    for text in hostile:
        compare(handlers, task="SST-2", text=text, pair="", methods=["full"])
    files = handlers.export("any", "")[ui.export_files]
    with open(files[0], newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["text"] for row in rows] == ["'" + text for text in hostile]
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row.values())
    assert json.loads(Path(files[1]).read_text())[0]["text"] == hostile[0], "the JSON keeps the text as typed"
    monkeypatch.setattr(app, "EXPORTS_KEPT", 3)
    folders = [Path(handlers.export("any", "")[ui.export_files][0]).parent for _ in range(5)]
    assert sorted(handlers.export_root.iterdir()) == sorted(folders[-3:])
    stale = time.time() - app.EXPORT_MAX_AGE_S - 60
    os.utime(folders[-1], (stale, stale))
    newest = Path(handlers.export("any", "")[ui.export_files][0]).parent
    assert not folders[-1].exists() and newest.exists() and len(list(handlers.export_root.iterdir())) == 3


# --- the running app ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_backbone, tmp_path_factory):
    """The demo on a free local port, with tiny models and its own query log."""
    folder = tmp_path_factory.mktemp("app")
    handlers = DemoHandlers(
        ModelCache(SHIPPED, tiny_loader(tiny_backbone)), QueryLog(folder / "queries.db"), export_root=folder
    )
    demo = build_demo(handlers)
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    yield types.SimpleNamespace(url=f"http://127.0.0.1:{port}/", handlers=handlers)
    demo.close()
    handlers.query_log.close()


@pytest.fixture
def client(server) -> Client:
    return Client(server.url, verbose=False, download_files=str(Path(server.handlers.export_root) / "downloads"))


def test_api_documents_exactly_the_named_endpoints(client, server):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/compare", "/explain", "/dev_layer_usage", "/logged_layer_usage", "/export_report"}
    parameters = [parameter["label"] for parameter in endpoints["/compare"]["parameters"]]
    assert len(parameters) == 5 + len(
        server.handlers.knob_methods
    )  # task, text, pair, methods, precision, then one knob per method that has one
    assert "Precision" in parameters[4]
    assert all(METHODS[method].title in label for method, label in zip(server.handlers.knob_methods, parameters[5:]))


def test_api_compare_then_explain_in_one_session(client, server):
    ui = server.handlers.components
    out = api_answer(
        ui.compare_outputs,
        client.predict(
            "MRPC",
            "the cat sat on the mat",
            "a cat was sitting",
            ALL_METHODS,
            "fp32",
            *knob_values(server.handlers, KNOBS),
            api_name="/compare",
        ),
    )
    assert out[ui.cards].count("result-card") == len(ALL_METHODS) and "Untrained heads" in out[ui.message]
    assert value(out[ui.path_chart])["type"] == "altair" and "Which layers ran" in value(out[ui.path_chart])["plot"]
    for method, chart in charts(ui, out).items():
        assert chart["type"] == "altair" and METHODS[method].layer_chart.title in chart["plot"]
    assert [trace["method"] for trace in out[ui.traces_json]] == ALL_METHODS and "query log: on" in out[ui.log_status]
    explained = api_answer([ui.attribution, ui.attribution_note], client.predict("dpbert", api_name="/explain"))
    assert (
        "cat" in "".join(item["token"] for item in explained[ui.attribution])
        and "DPBERT" in explained[ui.attribution_note]
    )


def test_api_reports_bad_input_as_a_message(client, server):
    ui = server.handlers.components
    returned = client.predict(
        "MRPC", "   ", "pair", ALL_METHODS, "fp32", *knob_values(server.handlers, KNOBS), api_name="/compare"
    )
    out = api_answer(ui.compare_outputs, returned)
    assert "the text is empty" in out[ui.message] and out[ui.cards] == "" and out[ui.traces_json] == []


def test_api_an_omitted_threshold_means_the_task_checkpoint_default(client, server):
    ui = server.handlers.components
    for task in ("MRPC", "SST-2", "MRPC"):
        pair = "a cat was sitting" if task == "MRPC" else ""
        out = api_answer(
            ui.compare_outputs, client.predict(task, "the cat sat on the mat", pair, ALL_METHODS, api_name="/compare")
        )
        got = {
            trace["method"]: trace["threshold"]
            for trace in out[ui.traces_json]
            if trace["method"] in server.handlers.knob_methods
        }
        assert got == SHIPPED_THRESHOLDS[task], task
    out = api_answer(
        ui.compare_outputs, client.predict("MRPC", "a", "b", ["dpbert"], None, None, 0.45, None, api_name="/compare")
    )
    assert out[ui.traces_json][0]["threshold"] == 0.45, "a threshold that is given is used"


def test_api_refuses_a_second_sentence_for_a_single_sentence_task(client, server):
    ui = server.handlers.components
    out = api_answer(
        ui.compare_outputs,
        client.predict("SST-2", "a fine film", "a second sentence", ALL_METHODS, api_name="/compare"),
    )
    assert "SST-2 takes a single sentence" in html.unescape(out[ui.message]) and out[ui.cards] == ""


@pytest.mark.parametrize("task", SHIPPED_TASKS)
def test_api_every_chart_is_strict_json(client, server, task):
    ui = server.handlers.components
    pair = "" if task == "SST-2" else "a cat was sitting on the mat"
    out = api_answer(
        ui.compare_outputs,
        client.predict(task, "the cat sat on the mat", pair, SHIPPED[task].methods, api_name="/compare"),
    )
    plots = [value(out[ui.path_chart]), *[chart for chart in charts(ui, out).values() if chart is not None]]
    assert len(plots) == 1 + len(set(SHIPPED[task].methods) & set(CHART_METHODS))
    plots.append(
        api_answer([ui.dev_chart, ui.dev_note, ui.probe_chart], client.predict(task, api_name="/dev_layer_usage"))[
            ui.dev_chart
        ]
    )
    plots.append(
        api_answer(ui.logged_usage_outputs, client.predict(task, "any", "", api_name="/logged_layer_usage"))[
            ui.log_chart
        ]
    )
    for plot in plots:
        assert plot["type"] == "altair" and strict_json(plot["plot"])["datasets"]


def test_api_layer_usage_and_export(client, server):
    ui = server.handlers.components
    client.predict(
        "SST-2",
        "a fine film",
        "",
        ["full", "deebert"],
        "int8",
        *knob_values(server.handlers, KNOBS),
        api_name="/compare",
    )
    chart = api_answer(
        [ui.dev_chart, ui.dev_note, ui.probe_chart], client.predict("SST-2", api_name="/dev_layer_usage")
    )[ui.dev_chart]
    assert chart["type"] == "altair" and "dev set" in chart["plot"]
    summary = api_answer(
        ui.logged_usage_outputs, client.predict("SST-2", "deebert", "1h", api_name="/logged_layer_usage")
    )[ui.log_summary]
    assert (
        summary["data"]
        and summary["headers"] == SUMMARY_COLUMNS
        and all(row[1] == "DeeBERT" for row in summary["data"])
    )
    exported = api_answer([ui.export_files, ui.log_note], client.predict("SST-2", "", api_name="/export_report"))
    assert "report written" in exported[ui.log_note]
    csv_file = next(Path(file) for file in exported[ui.export_files] if file.endswith(".csv"))
    assert "a fine film" in csv_file.read_text()


def test_fifty_simultaneous_queries_leave_one_row_per_query_and_method(client, server):
    methods = ["full", "deebert", "dpbert"]
    knobs = knob_values(server.handlers, KNOBS)
    jobs = [
        client.submit("SST-2", f"burst query number {i}", "", methods, "fp32", *knobs, api_name="/compare")
        for i in range(50)
    ]
    done, _ = wait(jobs, timeout=300)
    assert len(done) == 50
    assert all(
        "result-card"
        in api_answer(server.handlers.components.compare_outputs, job.result())[server.handlers.components.cards]
        for job in jobs
    )
    with sqlite3.connect(server.handlers.query_log.path) as connection:
        rows = connection.execute(
            "select queries.text, count(*) from results join queries on queries.id = results.query_id where "
            "queries.text like ? group by queries.id",
            ("burst query number %",),
        ).fetchall()
    assert len(rows) == 50 and {count for _, count in rows} == {len(methods)}
    assert {text for text, _ in rows} == {f"burst query number {i}" for i in range(50)}


def test_the_server_serves_no_file_a_user_names(server):
    readme = Path(__file__).resolve().parent.parent / "README.md"
    for name in (str(readme), "../README.md", str(server.handlers.query_log.path)):
        response = httpx.get(f"{server.url}gradio_api/file={name}")
        assert response.status_code in (403, 404) and "Adaptive-depth" not in response.text


def browser_page(url: str, profile: Path) -> str:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=30000",
        "--dump-dom",
        url,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180).stdout


def drawn_charts(page: str) -> dict[str, bool]:
    """Per chart block on the page (``id="chart-..."``): whether vega-embed drew it (a canvas of non-zero size); a
    chart whose JSON the browser cannot parse stays an empty box."""
    blocks = re.split(r'id="chart-', page)[1:]
    return {
        block.split('"', 1)[0]: bool(re.search(r'<canvas width="[1-9]\d*" height="[1-9]\d*"', block))
        for block in blocks
    }


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)"
)
def test_headless_browser_shows_the_result_of_an_example(server, tmp_path):
    page = browser_page(f"{server.url}?example=1", tmp_path / "profile")
    task, text, _ = example_rows(SHIPPED_TASKS)[0]
    assert page.count('class="result-card"') == len(SHIPPED[task].methods), page[-2000:]
    assert any(
        f'class="prediction" style="font-size:1.3em;font-weight:bold">{label}<' in page
        for label in ("negative", "positive")
    )
    assert text in page
    drawn = drawn_charts(page)
    assert all(drawn.get(name) for name in ["path", *CHART_METHODS]), drawn


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)"
)
@pytest.mark.parametrize("task", SHIPPED_TASKS)
def test_headless_browser_draws_the_dev_set_layer_usage_of_every_task(server, tmp_path, task):
    page = browser_page(f"{server.url}?usage={task}", tmp_path / "profile")
    assert drawn_charts(page).get("dev-usage"), page[-2000:]


@pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)"
)
def test_headless_browser_hides_the_widgets_of_methods_that_cannot_run_a_regression_example(server, tmp_path):
    number, (task, text, _) = next(
        (number, row) for number, row in enumerate(example_rows(SHIPPED_TASKS), start=1) if row[0] == "STS-B"
    )
    page = browser_page(f"{server.url}?example={number}", tmp_path / "profile")
    runnable = SHIPPED[task].methods
    assert page.count('class="result-card"') == len(runnable) and text in page, page[-2000:]
    assert "0–5 scale" in page
    drawn = drawn_charts(page)
    for method in CHART_METHODS:
        assert (f'id="chart-{method}"' in page) == (method in runnable), method
        assert drawn.get(method, False) == (method in runnable), method
    for method in server.handlers.knob_methods:
        assert (f'id="knob-{method}"' in page) == (method in runnable), method
