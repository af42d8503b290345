"""The demo: handlers as plain functions, the API through gradio_client, 50 queries at once, and a headless browser."""

from __future__ import annotations

import html
import json
import math
import re
import socket
import sqlite3
import subprocess
import threading
import types
from concurrent.futures import wait
from pathlib import Path

import httpx
import pytest
import torch
from gradio_client import Client

from app import DemoHandlers, build_demo, example_rows
from core.methods import BASELINE, METHODS
from core.model import build_model
from interpret.compare import CHART_METHODS, MAX_CHARS, ModelCache, knob_settings, methods_for
from interpret.querylog import QueryLog, read_results

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ALL_METHODS = list(METHODS)
KNOBS = {"deebert": 0.3, "dpbert": 0.5, "pabee": 3}
DEV_METRICS = {"layer_frequency": [1.0, 0.75, 0.5, 0.25], "exit_frequency": [0.25, 0.25, 0.25, 0.25]}


def tiny_loader(backbone: str):
    """Untrained heads on the tiny backbone, with dev-set layer frequencies as training would record them."""

    def load(task: str, method: str):
        torch.manual_seed(0)
        model = build_model(method, task, backbone=backbone).eval()
        model.config.metrics = dict(DEV_METRICS)
        return model

    return load


@pytest.fixture
def handlers(tiny_backbone, tmp_path) -> DemoHandlers:
    return DemoHandlers(ModelCache(tiny_loader(tiny_backbone)), QueryLog(tmp_path / "queries.db"), export_root=tmp_path)


def knob_values(handlers: DemoHandlers, knobs: dict) -> list:
    """The slider values in the order ``compare`` takes them (None: the model's default)."""
    return [knobs.get(method) for method in handlers.knob_methods]


def outputs(values: tuple, api: bool = False) -> dict:
    """``compare``'s outputs by name (through the API the state is not returned); ``charts`` per method."""
    message, results, path, *rest = values
    charts, rest = rest[: len(CHART_METHODS)], rest[len(CHART_METHODS) :]
    named = dict(zip(["traces", "status"] if api else ["traces", "state", "status"], rest, strict=True))
    return {"message": message, "results": results, "path": path, "charts": dict(zip(CHART_METHODS, charts)), **named}


def compare(handlers: DemoHandlers, task="MRPC", text="the cat sat on the mat", pair="a cat was sitting on the mat", methods=ALL_METHODS, knobs=KNOBS):
    return outputs(handlers.compare(task, text, pair, methods, *knob_values(handlers, knobs)))


def logged(handlers: DemoHandlers) -> list[dict]:
    return read_results(handlers.query_log.path) if handlers.query_log.path.is_file() else []


# --- handlers as functions ----------------------------------------------------------------
def test_compare_shows_every_method_and_logs_one_row_per_method(handlers):
    out = compare(handlers)
    for method in ALL_METHODS:
        assert f'data-method="{method}"' in out["results"]
    assert "speed-up vs full" in out["results"] and "layers executed" in out["results"]
    assert "Untrained heads" in out["message"]
    assert [trace["method"] for trace in out["traces"]] == ALL_METHODS
    assert set(CHART_METHODS) == {"deebert", "dact", "dpbert", "pabee"}
    assert all(out["charts"][method] is not None for method in CHART_METHODS)
    assert [trace["threshold"] for trace in out["traces"] if trace["method"] in KNOBS] == [
        KNOBS[trace["method"]] for trace in out["traces"] if trace["method"] in KNOBS
    ]
    rows = logged(handlers)
    assert sorted(row["method"] for row in rows) == sorted(ALL_METHODS) and len({row["query_id"] for row in rows}) == 1
    assert rows[0]["text_pair"] == "a cat was sitting on the mat"
    assert "query log: on" in out["status"]


def test_speed_up_baseline_runs_but_is_neither_shown_nor_logged(handlers):
    out = compare(handlers, methods=["dpbert"])
    assert 'data-method="full"' not in out["results"] and "measured" in out["results"] and "n/a" not in out["results"]
    assert "full model was also run" in out["message"]
    assert [row["method"] for row in logged(handlers)] == ["dpbert"]
    assert {method for method, chart in out["charts"].items() if chart is not None} == {"dpbert"}


def test_a_regression_task_charts_only_the_chosen_methods_that_can_run_it(handlers):
    out = compare(handlers, task="STS-B", methods=["full", "dpbert"])
    assert out["charts"]["deebert"] is None and out["charts"]["dact"] is None  # classification only
    assert out["charts"]["pabee"] is None  # can run STS-B, but was not chosen
    chart = out["charts"]["dpbert"].to_dict()
    assert "DPBERT" in json.dumps(chart["title"]) and [trace["method"] for trace in out["traces"]] == ["full", "dpbert"]
    out = compare(handlers, task="STS-B", methods=["pabee", "dpbert"])
    assert {method for method, chart in out["charts"].items() if chart is not None} == {"pabee", "dpbert"}
    assert out["traces"][0]["probabilities"] == {} and isinstance(out["traces"][0]["prediction"], float)
    shown = dict(zip(CHART_METHODS, handlers.charts_shown("STS-B", ["full", "deebert", "dpbert"])))
    assert {method for method, update in shown.items() if update["visible"]} == {"dpbert"}
    shown = dict(zip(CHART_METHODS, handlers.charts_shown("MRPC", ALL_METHODS)))
    assert all(update["visible"] for update in shown.values())
    assert not any(update["visible"] for update in handlers.charts_shown("MRPC", None))


def test_task_change_offers_the_task_methods_and_the_second_box_only_for_pairs(handlers):
    assert handlers.knob_methods == ["deebert", "dpbert", "pabee"]  # the methods whose model has a knob, in METHODS order
    pair, methods, deebert, dpbert, pabee = handlers.task_changed("STS-B")
    assert pair["visible"] is True and methods["value"] == ["full", "dpbert", "pabee"]
    assert deebert["visible"] is False and dpbert["visible"] is True and dpbert["maximum"] == 1.0 and dpbert["value"] == 0.5
    assert pabee["visible"] is True and (pabee["minimum"], pabee["maximum"], pabee["step"], pabee["value"]) == (1, 3, 1, 3)  # 4 tiny layers
    assert "PABEE" in pabee["label"] and "patience" in pabee["label"] and pabee["info"]
    pair, methods, deebert, _, _ = handlers.task_changed("SST-2")
    assert pair["visible"] is False and methods["value"] == ALL_METHODS
    assert deebert["maximum"] == pytest.approx(0.6931, abs=1e-4) and deebert["maximum"] <= math.log(2) and deebert["value"] == 0.0
    assert "DeeBERT" in deebert["label"] and "entropy" in deebert["label"]
    assert methods_for("RTE") == ALL_METHODS


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
    out = compare(handlers, **change)
    assert "Error:" in out["message"] and expected in out["message"]
    assert out["results"] == "" and out["traces"] == [] and out["path"] is None
    assert all(chart is None for chart in out["charts"].values())
    assert logged(handlers) == []


def test_control_characters_are_removed_and_said_so(handlers):
    out = compare(handlers, text="good\x00 film\x1b", pair="fine\x07")
    assert "text: removed 2 control character(s)" in out["message"]
    assert "second sentence: removed 1 control character(s)" in out["message"]
    assert "\x00" not in logged(handlers)[0]["text"] and 'data-method="dact"' in out["results"]


def test_markup_is_shown_escaped_never_rendered(handlers):
    out = compare(handlers, text="<script>alert('x')</script> <b>nice</b> &amp; fine")
    assert "<script>" not in out["results"] and "&lt;script&gt;" in out["results"]
    assert "contains markup" in out["message"]
    assert logged(handlers)[0]["text"].startswith("<script>")  # the log keeps the text as typed


def test_overlong_text_is_truncated_and_said_so(handlers):
    out = compare(handlers, text="word " * 400)
    assert "longer than the model's limit of 128 tokens" in html.unescape(out["message"])
    assert all(trace["truncated"] for trace in out["traces"])
    out = compare(handlers, text="x" * (MAX_CHARS + 50))
    assert f"only the first {MAX_CHARS:,} were kept" in out["message"]


def test_the_app_keeps_answering_when_the_log_cannot_be_written(tiny_backbone, tmp_path):
    broken = DemoHandlers(ModelCache(tiny_loader(tiny_backbone)), QueryLog(tmp_path))  # a folder is no database
    out = compare(broken)
    assert 'data-method="full"' in out["results"]
    assert "query log: off" in out["status"]
    assert "query log: off" in broken.logged_layer_usage("any", "any", "")[2]


def test_logging_switched_off_is_shown(tiny_backbone, monkeypatch):
    monkeypatch.setenv("ADAPTIVE_BERT_QUERY_LOG", "off")
    off = DemoHandlers(ModelCache(tiny_loader(tiny_backbone)), QueryLog.from_env())
    out = compare(off)
    assert 'data-method="dpbert"' in out["results"] and "query log: off (switched off" in out["status"]
    files, message = off.export("any", "")
    assert files is None and "switched off" in message


def test_model_cache_loads_each_model_once_and_warms_it_up(tiny_backbone):
    loads, load = [], tiny_loader(tiny_backbone)

    def counting(task, method):
        loads.append((task, method))
        model = load(task, method)
        model.warmed = []
        model.predict = lambda *args, _model=model, _predict=model.predict, **kwargs: (_model.warmed.append(args), _predict(*args, **kwargs))[1]
        return model

    cache = ModelCache(counting)
    got = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("mrpc", "dpbert"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert loads == [("MRPC", "dpbert")] and all(model is got[0] for model in got)
    assert got[0].warmed == [("warm up", "warm up")]


def test_explain_follows_the_method_answer(handlers):
    tokens, message = handlers.explain("dact", {})
    assert tokens == [] and "run a comparison first" in message
    out = compare(handlers)
    tokens, message = handlers.explain("deebert", out["state"])
    assert "cat" in "".join(token for token, _ in tokens)
    assert "DeeBERT" in message and f"'{out['state']['deebert'].prediction}'" in html.unescape(message)


def test_open_page_runs_the_example_named_in_the_address(handlers):
    task, text, pair, *values = handlers.open_page(types.SimpleNamespace(query_params={"example": "4"}))
    assert [task, text, pair] == example_rows()[3]
    out = outputs(tuple(values))
    assert out["results"].count("result-card") == len(methods_for(task))
    assert {method for method, chart in out["charts"].items() if chart is not None} == set(methods_for(task)) & set(CHART_METHODS)
    untouched = handlers.open_page(types.SimpleNamespace(query_params={"example": "999"}))
    assert "there is no example" in untouched[3] and len(untouched) == 3 + len(values)


def test_dev_layer_usage_uses_the_recorded_frequencies(handlers):
    chart, message = handlers.dev_layer_usage("MRPC")
    bars = [row for rows in chart.to_dict()["datasets"].values() for row in rows if "executed" in row]
    assert message == ""  # every method's usage was recorded at training time: nothing to note
    assert {row["method"] for row in bars} == {"Full model", "DeeBERT", "DACT-BERT", "DPBERT", "PABEE"}
    assert sorted({row["executed"] for row in bars}) == sorted(DEV_METRICS["layer_frequency"])


def test_logged_layer_usage_filters_and_export_writes_the_report(handlers):
    compare(handlers)
    compare(handlers, task="SST-2", text="a fine film", pair="", methods=["deebert", "dpbert"])
    chart, table, message = handlers.logged_layer_usage("SST-2", "any", "24h")
    assert table["queries"].tolist() == [1, 1] and set(table["method"]) == {"DeeBERT", "DPBERT"}
    assert "2 logged results" in message and "SST-2" in json.dumps(chart.to_dict())
    _, table, _ = handlers.logged_layer_usage("any", "dact", "")
    assert table["method"].tolist() == ["DACT-BERT"]
    files, message = handlers.export("any", "")
    assert [Path(file).name for file in files] == ["queries.csv", "queries.json", "report.html"]
    assert len(json.loads(Path(files[1]).read_text())) == len(ALL_METHODS) + 2


@pytest.mark.parametrize("source", ["app.py", *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "interpret").glob("*.py"))])
def test_the_demo_names_no_method(source):
    """Method-specific widgets come from METHODS: no method name (but the baseline's) is written out as a string."""
    names = "|".join(re.escape(name) for name in METHODS if name != BASELINE)
    found = re.findall(rf"""(["'])({names})\1""", (ROOT / source).read_text(encoding="utf-8"))
    assert found == [], f"{source} names methods: {sorted({name for _, name in found})}"


# --- the running app ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_backbone, tmp_path_factory):
    """The demo on a free local port, with tiny models and its own query log."""
    folder = tmp_path_factory.mktemp("app")
    handlers = DemoHandlers(ModelCache(tiny_loader(tiny_backbone)), QueryLog(folder / "queries.db"), export_root=folder)
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
    assert len(parameters) == 4 + len(server.handlers.knob_methods)  # task, text, pair, methods, then one knob per method that has one
    assert all(METHODS[method].title in label for method, label in zip(server.handlers.knob_methods, parameters[4:]))


def test_api_compare_then_explain_in_one_session(client, server):
    out = outputs(
        client.predict("MRPC", "the cat sat on the mat", "a cat was sitting", ALL_METHODS, *knob_values(server.handlers, KNOBS), api_name="/compare"), api=True
    )
    assert out["results"].count("result-card") == len(ALL_METHODS) and "Untrained heads" in out["message"]
    assert out["path"]["type"] == "altair" and "Which layers ran" in out["path"]["plot"]
    for method, chart in out["charts"].items():
        assert chart["type"] == "altair" and METHODS[method].layer_chart.title in chart["plot"]
    assert [trace["method"] for trace in out["traces"]] == ALL_METHODS and "query log: on" in out["status"]
    tokens, note = client.predict("dpbert", api_name="/explain")
    assert "cat" in "".join(item["token"] for item in tokens) and "DPBERT" in note


def test_api_reports_bad_input_as_a_message(client, server):
    message, results, *_ = client.predict("MRPC", "   ", "pair", ALL_METHODS, *knob_values(server.handlers, KNOBS), api_name="/compare")
    assert "the text is empty" in message and results == ""


def test_api_layer_usage_and_export(client, server):
    client.predict("SST-2", "a fine film", "", ["full", "deebert"], *knob_values(server.handlers, KNOBS), api_name="/compare")
    chart, message = client.predict("SST-2", api_name="/dev_layer_usage")
    assert chart["type"] == "altair" and "dev set" in chart["plot"]
    chart, summary, message = client.predict("SST-2", "deebert", "1h", api_name="/logged_layer_usage")
    assert summary["data"] and all(row[1] == "DeeBERT" for row in summary["data"])
    files, message = client.predict("SST-2", "", api_name="/export_report")
    assert "report written" in message
    csv_file = next(Path(file) for file in files if file.endswith(".csv"))
    assert "a fine film" in csv_file.read_text()


def test_fifty_simultaneous_queries_leave_one_row_per_query_and_method(client, server):
    methods = ["full", "deebert", "dpbert"]
    knobs = knob_values(server.handlers, KNOBS)
    jobs = [client.submit("SST-2", f"burst query number {i}", "", methods, *knobs, api_name="/compare") for i in range(50)]
    done, _ = wait(jobs, timeout=300)
    assert len(done) == 50
    assert all("result-card" in job.result()[1] for job in jobs)
    with sqlite3.connect(server.handlers.query_log.path) as connection:
        rows = connection.execute(
            "select queries.text, count(*) from results join queries on queries.id = results.query_id where queries.text like ? group by queries.id",
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


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
def test_headless_browser_shows_the_result_of_an_example(server, tmp_path):
    page = browser_page(f"{server.url}?example=1", tmp_path / "profile")
    task, text, _ = example_rows()[0]
    assert page.count('class="result-card"') == len(methods_for(task)), page[-2000:]
    assert any(f'class="prediction" style="font-size:1.3em;font-weight:bold">{label}<' in page for label in ("negative", "positive"))
    assert text in page
    assert all(f'id="chart-{method}"' in page for method in CHART_METHODS)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
def test_headless_browser_hides_the_widgets_of_methods_that_cannot_run_a_regression_example(server, tmp_path):
    number, (task, text, _) = next((number, row) for number, row in enumerate(example_rows(), start=1) if row[0] == "STS-B")
    page = browser_page(f"{server.url}?example={number}", tmp_path / "profile")
    runnable = methods_for(task)
    assert page.count('class="result-card"') == len(runnable) and text in page, page[-2000:]
    for method in CHART_METHODS:
        assert (f'id="chart-{method}"' in page) == (method in runnable), method
    for method in server.handlers.knob_methods:
        assert (f'id="knob-{method}"' in page) == (method in runnable), method
