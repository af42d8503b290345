"""The demo on a folder of one's own checkpoints.

Its tasks fill the menus, answers use their labels or a bare score, and a bad folder stops the start.
"""

from __future__ import annotations

import html
import json
import types

import gradio as gr
import pytest

import app
from app import ANY, DemoHandlers, build_demo
from core.catalog import read_catalog
from core.checkpoint import SHIPPED_DIR, save_checkpoint
from core.errors import UserError
from core.model import build_model
from core.tasks import TaskSpec
from interpret.compare import ModelCache
from interpret.querylog import QueryLog

TICKETS = TaskSpec("tickets", ("billing", "login", "shipping"), pair=False)  # three classes, one sentence
CLOSENESS = TaskSpec("closeness", None, pair=True)  # a score for a pair, on no fixed scale
FOLDER_METHODS = {
    TICKETS: ["full", "deebert"],
    CLOSENESS: ["dpbert", "pabee"],
}  # closeness has no full model to time against
DEV_METRICS = {"layer_frequency": [1.0, 0.75, 0.5, 0.25], "examples": 20}


@pytest.fixture(scope="module")
def own_folder(tiny_backbone, tmp_path_factory):
    """A checkpoint folder laid out as <task>/<method>, as training runs on one's own data leave it."""
    root = tmp_path_factory.mktemp("own-checkpoints")
    for spec, methods in FOLDER_METHODS.items():
        for method in methods:
            model = build_model(method, spec, backbone=tiny_backbone)
            model.config.trained, model.config.metrics = True, dict(DEV_METRICS)
            save_checkpoint(model, root / spec.name / method)
    return root


@pytest.fixture
def handlers(own_folder, tmp_path) -> DemoHandlers:
    handlers = DemoHandlers(
        ModelCache(read_catalog(own_folder)), QueryLog(tmp_path / "queries.db"), export_root=tmp_path
    )
    build_demo(handlers)
    return handlers


def compare(handlers: DemoHandlers, task: str, text: str, pair: str = "") -> dict:
    return handlers.compare(
        task, text, pair, handlers.models.methods_for(task), "fp32", *[None] * len(handlers.knob_methods)
    )


def page(handlers: DemoHandlers, **query_params: str) -> dict:
    """``open_page`` as a visitor arriving at ``/?name=value...`` sees it."""
    return handlers.open_page(types.SimpleNamespace(query_params=query_params))


def value(shown):
    """A chart in a handler's answer (``compare`` wraps the charts it shows in ``gr.update``)."""
    return shown.get("value") if isinstance(shown, dict) else shown


def task_menus(demo: gr.Blocks) -> list[list[str]]:
    """The values every task menu of the page offers (the Compare tab's and both Layer usage ones)."""
    return [
        [choice for _, choice in block.choices]
        for block in demo.blocks.values()
        if isinstance(block, gr.Dropdown) and block.label == "Task"
    ]


def test_the_task_menus_offer_exactly_the_folders_tasks_and_no_examples(handlers):
    demo, ui = build_demo(handlers), handlers.components
    assert handlers.models.tasks == ["closeness", "tickets"]
    assert task_menus(demo) == [["closeness", "tickets"], ["closeness", "tickets"], [ANY, "closeness", "tickets"]]
    assert ui.task.value == "closeness" and ui.text_pair.visible is True, (
        "the first task takes a pair, so the page opens with the second box"
    )
    assert not any(isinstance(block, gr.Dataset) for block in demo.blocks.values()), (
        "tasks of one's own ship no examples"
    )
    assert "these tasks have none" in page(handlers, example="1")[ui.message]


def test_a_task_offers_the_methods_of_its_folder_and_the_pair_box_follows_it(handlers):
    ui = handlers.components
    changed = handlers.task_changed("tickets")
    assert changed[ui.text_pair]["visible"] is False and changed[ui.text_pair]["value"] == ""
    assert changed[ui.methods]["value"] == FOLDER_METHODS[TICKETS]
    assert {method: changed[ui.knobs[method]]["visible"] for method in handlers.knob_methods} == {
        "deebert": True,
        "dpbert": False,
        "pabee": False,
    }
    changed = handlers.task_changed("closeness")
    assert changed[ui.text_pair]["visible"] is True and changed[ui.methods]["value"] == FOLDER_METHODS[CLOSENESS]
    assert {method: changed[ui.knobs[method]]["visible"] for method in handlers.knob_methods} == {
        "deebert": False,
        "dpbert": True,
        "pabee": True,
    }


def test_a_three_class_task_answers_with_its_own_labels(handlers):
    ui = handlers.components
    out = compare(handlers, "tickets", "I was charged <b>twice</b>")
    assert "Error:" not in out[ui.message] and "Untrained" not in out[ui.message]
    traces = out[ui.traces_json]
    assert [trace["method"] for trace in traces] == FOLDER_METHODS[TICKETS]
    assert all(
        list(trace["probabilities"]) == list(TICKETS.labels) and trace["prediction"] in TICKETS.labels
        for trace in traces
    )
    assert (
        all(f"{label}: " in out[ui.cards] for label in TICKETS.labels) and "&lt;b&gt;twice&lt;/b&gt;" in out[ui.cards]
    )
    assert f"({traces[1]['prediction']})" in json.dumps(value(out[ui.method_charts["deebert"]]).to_dict()["title"])
    out = compare(handlers, "tickets", "I was charged twice", pair="and again")
    assert "tickets takes a single sentence" in out[ui.message] and out[ui.traces_json] == []


def test_a_regression_pair_task_answers_a_score_on_no_glue_scale(handlers):
    ui = handlers.components
    out = compare(handlers, "closeness", "the cat sat on the mat", pair="a cat was sitting")
    traces = out[ui.traces_json]
    assert [trace["method"] for trace in traces] == FOLDER_METHODS[CLOSENESS] and all(
        isinstance(trace["prediction"], float) for trace in traces
    )
    assert out[ui.cards].count("score ") == 2 and "scale" not in out[ui.cards] and "clipped" not in out[ui.cards]
    assert (
        "no full model checkpoint for closeness, so no speed-up is measured" in out[ui.message]
        and out[ui.cards].count("n/a measured") == 2
    )
    title = json.dumps(value(out[ui.method_charts["dpbert"]]).to_dict()["title"])
    assert f"({traces[0]['prediction']:.2f})" in title and " of " not in title
    out = compare(handlers, "closeness", "the cat sat on the mat")
    assert "closeness compares two sentences" in out[ui.message]
    with pytest.raises(UserError, match="holds no Full model checkpoint for closeness"):
        handlers.models.get("closeness", "full")


def test_the_layer_usage_tab_serves_the_folders_tasks(handlers):
    ui = handlers.components
    dev = handlers.dev_layer_usage("tickets")
    assert dev[ui.dev_note] == "" and "tickets: layer usage on the dev set" in dev[ui.dev_chart].to_json()
    assert dev[ui.probe_chart]["visible"] is False, "no probe was committed for a task of one's own"
    opened = page(handlers, usage="Tickets")
    assert opened[ui.dev_task] == "tickets" and "tickets: layer usage on the dev set" in opened[ui.dev_chart].to_json()
    assert "unknown task 'sst2': this demo serves closeness, tickets" in html.unescape(
        page(handlers, usage="sst2")[ui.dev_note]
    )
    assert "unknown task 'sst2'" in html.unescape(handlers.dev_layer_usage("sst2")[ui.dev_note]), (
        "an API caller's unknown task is a message"
    )
    compare(handlers, "tickets", "my parcel never came")
    compare(handlers, "closeness", "a", pair="b")
    logged = handlers.logged_layer_usage("tickets", ANY, "")
    assert (
        "tickets: layer usage over 1 logged queries" in logged[ui.log_chart].to_json()
        and "closeness" not in logged[ui.log_chart].to_json()
    )
    assert sorted(logged[ui.log_summary]["method"]) == ["DeeBERT", "Full model"]
    exported = handlers.export("closeness", "")
    assert "report written: 2 result rows" in exported[ui.log_note]


@pytest.fixture
def started(monkeypatch):
    """What ``app.main`` would serve: the handlers it built, never a running server."""
    served = []
    monkeypatch.setenv("ADAPTIVE_BERT_QUERY_LOG", "off")
    monkeypatch.delenv(app.CHECKPOINTS_ENV, raising=False)
    monkeypatch.setattr(
        app,
        "build_demo",
        lambda handlers: served.append(handlers) or types.SimpleNamespace(launch=lambda **settings: None),
    )
    return served


@pytest.mark.parametrize("layout", ["missing", "empty"])
@pytest.mark.parametrize("given", ["flag", "environment"])
def test_a_folder_without_checkpoints_stops_the_start_in_one_line(
    started, tmp_path, monkeypatch, capsys, layout, given
):
    folder = tmp_path / "checkpoints"
    if layout == "empty":
        (folder / "tickets" / "deebert").mkdir(parents=True)
        (folder / "README.md").write_text("no checkpoints yet\n")
    if given == "environment":
        monkeypatch.setenv(app.CHECKPOINTS_ENV, str(folder))
    assert app.main(["--checkpoints", str(folder)] if given == "flag" else []) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and "Traceback" not in error
    assert ("does not exist" if layout == "missing" else "no checkpoints in") in error
    assert started == [], "the server does not start"


def test_the_flag_wins_over_the_environment_and_the_shipped_folder_is_the_default(
    started, own_folder, tmp_path, monkeypatch
):
    assert app.main([]) == 0 and started[-1].models.tasks == list(read_catalog(SHIPPED_DIR))
    monkeypatch.setenv(app.CHECKPOINTS_ENV, str(own_folder))
    assert app.main([]) == 0 and started[-1].models.tasks == ["closeness", "tickets"]
    monkeypatch.setenv(app.CHECKPOINTS_ENV, str(tmp_path / "nowhere"))
    assert app.main(["--checkpoints", str(own_folder)]) == 0 and started[-1].models.tasks == ["closeness", "tickets"]
