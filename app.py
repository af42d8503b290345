"""Gradio demo: compare adaptive-depth methods on one input and see which layers ran, and why.

    python app.py                          # http://127.0.0.1:7860, shipped checkpoints, no network
    python app.py --checkpoints runs/      # any folder laid out as <task>/<method>/config.json

The tasks and their methods are those of the checkpoint folder (``--checkpoints``, else
``ADAPTIVE_BERT_CHECKPOINTS``, else assets/checkpoints), GLUE tasks or one's own; a folder
that does not exist or holds no checkpoint stops the start with one line saying so.

Widgets and their wiring only: models, the comparison and its HTML come from interpret.compare and interpret.render,
charts, attributions, the query log and reports from the rest of interpret/. Every method-specific widget (a knob
slider, a per-layer chart) is made by looping over ``core.methods.METHODS``. Handlers live on ``DemoHandlers`` and
answer ``{widget: value}`` for the widgets they change (``DemoComponents`` names them), so tests call them as plain
functions and read their answers by widget, never by position. Query log: ``ADAPTIVE_BERT_QUERY_DB`` (a file),
``ADAPTIVE_BERT_DATA_DIR`` (a folder for lasting data, e.g. a Space's /data) and ``ADAPTIVE_BERT_QUERY_LOG=off``;
models run on ``ADAPTIVE_BERT_DEVICE`` (default: the best available). Visitors never see the server's paths: those, and
the errors that name them, go to the server log.

Links: ``?example=N`` runs example N; ``?usage=TASK`` opens the Layer usage tab on TASK's dev set.
Opening that tab shows what the query log holds at that moment, or says that it is empty or off.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import gradio as gr
import pandas as pd

from core.catalog import read_catalog
from core.checkpoint import SHIPPED_DIR
from core.errors import UserError, command_line
from core.methods import BASELINE, METHODS
from core.precision import CHOICES, DESCRIPTIONS, FASTEST, FP32
from core.tasks import canonical_task
from interpret.attributions import attribute
from interpret.charts import layer_frequency_chart, layer_path_chart, method_chart, method_title, probe_chart, stacked
from interpret.compare import CHART_METHODS, ModelCache, compare_methods, knob_methods, knob_settings
from interpret.probes import probe_results
from interpret.querylog import QueryLog, holds_results, parse_since, read_results
from interpret.render import attribution_caption, intro_markdown, message_html, results_html
from interpret.report import export_report, summary_table
from interpret.usage import precomputed_usage, usage_by_task

HERE = Path(__file__).resolve().parent
EXAMPLES_FILE = HERE / "assets" / "examples.json"  # per GLUE task; a task of one's own has none
CHECKPOINTS_ENV = "ADAPTIVE_BERT_CHECKPOINTS"  # the folder the demo serves when --checkpoints is not given
QUEUE_SIZE = 128  # requests waiting beyond this are told the queue is full instead of piling up
CONCURRENT_QUERIES = 4
ANY = "any"
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
)  # local fonts: no download
SINCE_CHOICES = [("all time", ""), ("last hour", "1h"), ("last day", "24h"), ("last week", "7d")]
PLOTS_PER_ROW = 2
EXPORTS_FOLDER = "adaptive-bert-exports"  # under the export root (the system's temporary folder by default)
EXPORTS_KEPT = 16  # older report folders are deleted at the next export ...
EXPORT_MAX_AGE_S = 3600  # ... and so is any older than this
PRECISION_INFO = (
    "every chosen method and the full model run at it; fastest (default) lets each checkpoint take the fastest "
    "precision that keeps its metric on the validation split, and the notes say what it costs in agreement with "
    "fp32; int8 and onnx-int8 are the fast ones on CPUs (onnx-* export each model's layers when first chosen: "
    "seconds per layer), bf16 needs a GPU or a newer CPU"
)
GRADIO_CACHE_CLEANUP = (3600, 3600)  # every hour, Gradio deletes the copies of files it served more than an hour ago
COMPARE_TAB, USAGE_TAB = "compare", "usage"
logger = logging.getLogger("adaptive_bert.app")


def load_examples() -> dict[str, list[dict]]:
    return json.loads(EXAMPLES_FILE.read_text(encoding="utf-8"))


def example_rows(tasks: Iterable[str]) -> list[list[str]]:
    """The served tasks' examples as rows of (task, text, second sentence) for ``gr.Examples``."""
    served = set(tasks)
    return [
        [task, item["text"], item.get("text_pair", "")]
        for task, items in load_examples().items()
        if task in served
        for item in items
    ]


def method_choices(methods) -> list[tuple[str, str]]:
    return [(method_title(method), method) for method in methods]


@dataclass(frozen=True)
class DemoComponents:
    """The widgets the handlers answer to.

    Every handler returns ``{widget: value}`` for the widgets it changes, and leaves the rest.
    """

    task: gr.Dropdown
    text: gr.Textbox
    text_pair: gr.Textbox
    methods: gr.CheckboxGroup
    knobs: dict[str, gr.Slider]  # per method in ``DemoHandlers.knob_methods``
    message: gr.HTML
    cards: gr.HTML
    path_chart: gr.Plot
    method_charts: dict[str, gr.Plot]  # per method in ``CHART_METHODS``
    traces_json: gr.JSON
    traces_state: gr.State
    log_status: gr.Markdown
    attribution: gr.HighlightedText
    attribution_note: gr.HTML
    tabs: gr.Tabs
    dev_task: gr.Dropdown
    dev_chart: gr.Plot
    probe_chart: gr.Plot  # what each layer knows (a linear probe per layer), where the task has one committed
    dev_note: gr.HTML
    log_task: gr.Dropdown  # the logged queries' task filter
    log_view: gr.Column  # holds the logged-queries chart and summary: hidden while there is nothing to show
    log_chart: gr.Plot
    log_summary: gr.Dataframe
    log_note: gr.HTML
    export_files: gr.File

    @property
    def compare_outputs(self) -> list[gr.blocks.Block]:
        """What ``compare`` changes, in the order the ``/compare`` endpoint returns it (README, "Demo"; the API leaves
        out the state).
        """
        return [
            self.message,
            self.cards,
            self.path_chart,
            *self.method_charts.values(),
            self.traces_json,
            self.traces_state,
            self.log_status,
        ]

    @property
    def logged_usage_outputs(self) -> list[gr.blocks.Block]:
        """What ``logged_layer_usage`` changes.

        The ``/logged_layer_usage`` endpoint returns the chart, summary and note (no layout).
        """
        return [self.log_chart, self.log_summary, self.log_note, self.log_view]


def shown(value) -> dict:
    """A chart drawn and made visible."""
    return gr.update(value=value, visible=True)


def hidden() -> dict:
    """A chart emptied and hidden, so the page shows no empty box."""
    return gr.update(value=None, visible=False)


class DemoHandlers:
    """Every event handler of the demo, as plain methods over a model cache and a query log.

    ``build_demo`` hands them their widgets.
    """

    def __init__(self, models: ModelCache, query_log: QueryLog, export_root: Path | None = None):
        self.models = models
        self.query_log = query_log
        self.export_root = Path(export_root or tempfile.gettempdir()) / EXPORTS_FOLDER
        self._components: DemoComponents | None = None

    @property
    def components(self) -> DemoComponents:
        """The widgets the handlers' answers are keyed by."""
        if self._components is None:
            raise RuntimeError(
                "the handlers have no widgets yet: build_demo(handlers) lays them out and hands them over"
            )
        return self._components

    def attach(self, components: DemoComponents) -> None:
        """Answer to these widgets (``build_demo`` calls it once it has laid them out)."""
        self._components = components

    @cached_property
    def knob_methods(self) -> list[str]:
        """The methods with a knob slider, in ``METHODS`` order: ``compare`` takes their values in this order."""
        return knob_methods(self.models)

    def api_compare(self) -> Callable[..., dict]:
        """``compare`` for the API: every knob a keyword parameter (``<method>_threshold``) defaulting to None, so a
        call that leaves one out runs the task's checkpoint default (not the value a page slider happens to hold)."""
        knobs = [
            inspect.Parameter(f"{method}_threshold", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
            for method in self.knob_methods
        ]
        plain = ["task", "text"]
        optional = ["text_pair", "methods", "precision"]
        signature = inspect.Signature(
            [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in plain]
            + [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for name in optional]
            + knobs
        )

        def compare_api(*args, **kwargs) -> dict:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return self.compare(*bound.arguments.values())

        compare_api.__signature__ = signature
        compare_api.__doc__ = self.compare.__doc__
        return compare_api

    def api_knob_label(self, method: str) -> str:
        """The label of a knob's API parameter: left empty, the task's checkpoint default is used."""
        task = next(task for task in self.models.tasks if method in self.models.methods_for(task))
        return f"{knob_settings(self.models, task, method)['label']} (leave empty: the task's checkpoint default)"

    # --- main view -------------------------------------------------------------------------
    def task_changed(self, task: str) -> dict:
        """Show the second box only for pair tasks (emptied for single-sentence ones), offer the task's methods, and
        set each knob slider to the task's range and default."""
        ui, methods = self.components, self.models.methods_for(task)
        pair = self.models.spec(task).pair
        return {
            ui.text_pair: gr.update(visible=True) if pair else gr.update(visible=False, value=""),
            ui.methods: gr.update(choices=method_choices(methods), value=methods),
            **{
                ui.knobs[method]: gr.update(**knob_settings(self.models, task, method)) for method in self.knob_methods
            },
        }

    def compare(
        self,
        task: str,
        text: str | None,
        text_pair: str | None,
        methods: list[str] | None,
        precision: str | None,
        *knob_values: float | None,
    ) -> dict:
        """Run every chosen method on the input at ``precision`` (None: fp32), with the knob values in ``knob_methods``
        order (None: the task's default).

        Answers every widget of ``DemoComponents.compare_outputs``: the message, the result cards, the layer-path
        chart, the per-layer charts (shown only for the methods that ran), the traces as JSON and for attributions, and
        the log status.
        """
        ui = self.components
        try:
            knobs = dict(zip(self.knob_methods, knob_values))
            result = compare_methods(
                self.models, task, text, text_pair, methods or [], knobs, precision=precision or FP32
            )
        except UserError as error:
            return {
                ui.message: message_html([str(error)], []),
                ui.cards: "",
                ui.path_chart: hidden(),
                **{chart: hidden() for chart in ui.method_charts.values()},
                ui.traces_json: [],
                ui.traces_state: {},
                ui.log_status: self.query_log.status,
            }
        self.query_log.record(
            result.task, result.text, result.text_pair, result.settings(), result.traces, result.trained
        )
        traces = {method: result.trace(method) for method in CHART_METHODS}
        return {
            ui.message: message_html([], result.notes),
            ui.cards: results_html(
                result.traces,
                result.trained,
                result.baseline_latency_ms,
                result.runs,
                result.fp32_baseline_latency_ms,
                result.baseline_precision,
            ),
            ui.path_chart: shown(layer_path_chart(result.traces)),
            **{
                chart: hidden() if traces[method] is None else shown(method_chart(traces[method]))
                for method, chart in ui.method_charts.items()
            },
            ui.traces_json: [trace.to_dict() for trace in result.traces],
            ui.traces_state: {trace.method: trace for trace in result.traces},
            ui.log_status: self.query_log.status,
        }

    def explain(self, method: str | None, traces: dict | None) -> dict:
        """Token attributions for one method's last answer, along the path it took."""
        ui = self.components
        trace = (traces or {}).get(method or "")
        if trace is None:
            return {
                ui.attribution: [],
                ui.attribution_note: message_html(["run a comparison first, then pick one of its methods"], []),
            }
        result = attribute(self.models.get(trace.task, trace.method), trace)
        return {
            ui.attribution: result.tokens,
            ui.attribution_note: message_html([], [attribution_caption(trace, result)]),
        }

    # --- layer usage -----------------------------------------------------------------------
    def dev_layer_usage(self, task: str, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> dict:
        """Layer-frequency histogram on the task's dev set, as each checkpoint recorded it, and the task's committed
        probe chart.
        """
        ui = self.components
        try:
            name = self.models.spec(task).name
        except UserError as error:
            return {ui.dev_chart: None, ui.dev_note: message_html([str(error)], []), ui.probe_chart: hidden()}
        frames, notes = [], []
        for method in self.models.methods_for(name):
            usage = precomputed_usage(self.models.get(name, method))
            if usage is None:
                notes.append(
                    f"{method_title(method)}: its checkpoint records no dev-set layer usage (untrained heads, "
                    "or never calibrated)."
                )
                continue
            frames.append(usage)
        probes = probe_results(name)
        probe = {ui.probe_chart: hidden() if probes is None else shown(probe_chart(probes, name))}
        if not frames:
            return {
                ui.dev_chart: None,
                ui.dev_note: message_html([], notes or ["no dev-set layer usage available"]),
            } | probe
        chart = layer_frequency_chart(pd.concat(frames, ignore_index=True), f"{name}: layer usage on the dev set")
        return {ui.dev_chart: chart, ui.dev_note: message_html([], notes)} | probe

    def _logged_rows(self, task: str, method: str | None, since: str) -> list[dict]:
        """The logged results matching the filters.

        A UserError only for what the visitor typed (never naming a path).
        """
        start = parse_since(since)
        task_name = None if task == ANY else canonical_task(task)
        if not self.query_log.path.is_file():
            return []
        try:
            return read_results(
                self.query_log.path, task=task_name, method=None if method in (None, ANY) else method, since=start
            )
        except UserError as error:
            logger.warning("reading the query log: %s", error)
            raise UserError("the query log cannot be read right now (the server log says why)") from None

    def logged_layer_usage(self, task: str, method: str | None, since: str | None) -> dict:
        """Layer-frequency histogram and summary over the logged queries, filtered by task, method and time; where
        there is nothing to show, both are hidden and the note says why (the log is off, empty, or nothing matches
        the filters)."""
        ui = self.components
        if not self.query_log.enabled:
            return self._no_logged_usage(message_html([], [self.query_log.status]))
        try:
            rows = self._logged_rows(task, method, since or "")
        except UserError as error:
            return self._no_logged_usage(message_html([str(error)], []))
        if not rows:
            filtered = task != ANY or method not in (None, ANY) or bool((since or "").strip())
            filtered = filtered and holds_results(self.query_log.path)
            return self._no_logged_usage(
                message_html([], ["no logged queries match these filters" if filtered else "no queries logged yet"])
            )
        charts = [
            layer_frequency_chart(usage, f"{name}: layer usage over {usage['inputs'].max()} logged queries per method")
            for name, usage in usage_by_task(rows).items()
        ]
        return {
            ui.log_chart: stacked(charts),
            ui.log_summary: summary_table(rows),
            ui.log_note: message_html([], [f"{len(rows)} logged results (one per query and method)"]),
            ui.log_view: gr.update(visible=True),
        }

    def _no_logged_usage(self, note: str) -> dict:
        """No chart, an empty summary (its real headers, for API callers) and the view holding both hidden.

        The note says why.
        """
        ui = self.components
        return {
            ui.log_chart: None,
            ui.log_summary: summary_table([]),
            ui.log_note: note,
            ui.log_view: gr.update(visible=False),
        }

    def prune_exports(self, keep: int) -> None:
        """Delete report folders older than ``EXPORT_MAX_AGE_S`` and all but the newest ``keep`` (Gradio serves its own
        copies).
        """
        if not self.export_root.is_dir():
            return
        folders = sorted(
            (path for path in self.export_root.iterdir() if path.is_dir()),
            key=lambda path: path.stat().st_mtime,
            reverse=True,
        )
        now = time.time()
        for rank, folder in enumerate(folders):
            if rank >= keep or now - folder.stat().st_mtime > EXPORT_MAX_AGE_S:
                shutil.rmtree(folder, ignore_errors=True)

    def export(self, task: str, since: str) -> dict:
        """Write the layer-usage report (CSV, JSON, HTML) for the logged queries into a fresh folder and offer it for
        download.
        """
        ui = self.components
        if not self.query_log.enabled:
            return {ui.export_files: None, ui.log_note: message_html([], [self.query_log.status])}
        try:
            parse_since(since)
        except UserError as error:
            return {ui.export_files: None, ui.log_note: message_html([str(error)], [])}
        if not self.query_log.path.is_file():
            return {ui.export_files: None, ui.log_note: message_html([], ["no queries logged yet: nothing to export"])}
        try:
            self.prune_exports(keep=EXPORTS_KEPT - 1)  # with the new one, at most EXPORTS_KEPT
            self.export_root.mkdir(parents=True, exist_ok=True)
            folder = tempfile.mkdtemp(prefix="report-", dir=self.export_root)
            files = export_report(self.query_log.path, folder, task=None if task == ANY else task, since=since)
        except (UserError, OSError) as error:
            logger.warning("export: %s", error)
            return {
                ui.export_files: None,
                ui.log_note: message_html(["the report could not be written (the server log says why)"], []),
            }
        return {
            ui.export_files: [str(path) for path in files.paths()],
            ui.log_note: message_html([], [f"report written: {files.rows} result rows"]),
        }

    # --- page load -------------------------------------------------------------------------
    def open_page(self, request: gr.Request) -> dict:
        """Links that show a result when the page opens: ``?example=N`` fills in example N (1-based) and runs it;
        ``?usage=TASK`` opens the Layer usage tab with TASK's dev-set chart and the usage of its logged queries (the
        task filter set to it; every task's for a task the demo does not serve). The log status is refreshed either
        way; widgets no link asks for are left as they are."""
        ui = self.components
        rows = example_rows(self.models.tasks)
        params = request.query_params if request is not None else {}
        wanted, usage_task = params.get("example", ""), params.get("usage", "")
        answer = {
            ui.log_status: self.query_log.status
        }  # the example runs first, so the logged usage below includes it
        if wanted.isdigit() and 1 <= int(wanted) <= len(rows):
            task, text, text_pair = rows[int(wanted) - 1]
            answer |= {ui.task: task, ui.text: text, ui.text_pair: text_pair}
            answer |= self.compare(
                task, text, text_pair, self.models.methods_for(task), FASTEST, *[None] * len(self.knob_methods)
            )
        elif wanted:
            which = f"use 1 to {len(rows)}" if rows else "these tasks have none"
            answer[ui.message] = message_html([f"there is no example {wanted!r}: {which}"], [])
        if usage_task:
            answer[ui.tabs] = gr.Tabs(selected=USAGE_TAB)
            try:
                name = self.models.spec(usage_task).name
            except UserError as error:
                answer |= {ui.dev_chart: None, ui.dev_note: message_html([str(error)], [])}
                answer |= self.logged_layer_usage(ANY, ANY, "")
            else:
                answer |= {ui.dev_task: name, ui.log_task: name} | self.dev_layer_usage(name)
                answer |= self.logged_layer_usage(name, ANY, "")
        return answer


def build_demo(handlers: DemoHandlers) -> gr.Blocks:
    """The Blocks app with its queue; API endpoints.

    Compare, explain, dev_layer_usage, logged_layer_usage, export_report.
    """
    tasks = handlers.models.tasks
    task_name = tasks[0]
    chosen = handlers.models.methods_for(task_name)
    examples = example_rows(tasks)
    with gr.Blocks(title="Adaptive-depth BERT", analytics_enabled=False, delete_cache=GRADIO_CACHE_CLEANUP) as demo:
        gr.Markdown(intro_markdown())
        log_status = gr.Markdown(handlers.query_log.status, label="Query log status", elem_id="log-status")
        with gr.Tabs(selected=COMPARE_TAB) as tabs:
            with gr.Tab("Compare methods", id=COMPARE_TAB):
                with gr.Row():
                    with gr.Column(scale=3):
                        task = gr.Dropdown(tasks, value=task_name, label="Task")
                        text = gr.Textbox(label="Sentence", lines=2, placeholder="Type a sentence")
                        text_pair = gr.Textbox(
                            label="Second sentence",
                            lines=2,
                            visible=handlers.models.spec(task_name).pair,
                            placeholder="Type the second sentence",
                        )
                        methods = gr.CheckboxGroup(method_choices(chosen), value=chosen, label="Methods to compare")
                        precision = gr.Radio(
                            [(DESCRIPTIONS[name], name) for name in CHOICES],
                            value=FASTEST,
                            label="Precision",
                            info=PRECISION_INFO,
                            elem_id="precision",
                        )
                        run = gr.Button("Compare", variant="primary", elem_id="compare-button")
                    with gr.Column(scale=2):
                        knobs = {
                            method: gr.Slider(
                                **knob_settings(handlers.models, task_name, method), elem_id=f"knob-{method}"
                            )
                            for method in handlers.knob_methods
                        }
                        if examples:  # only GLUE tasks ship examples
                            gr.Examples(
                                examples, inputs=[task, text, text_pair], label="Examples", examples_per_page=5
                            )
                message = gr.HTML(label="Message", elem_id="message")
                cards = gr.HTML(label="Results", elem_id="results")
                # charts stay hidden until a comparison draws them, and a method that did not run shows no empty box
                path_chart = gr.Plot(label="Layer path", show_label=False, visible=False, elem_id="chart-path")
                method_charts = {}
                for start in range(0, len(CHART_METHODS), PLOTS_PER_ROW):
                    with gr.Row():
                        for method in CHART_METHODS[start : start + PLOTS_PER_ROW]:
                            method_charts[method] = gr.Plot(
                                label=METHODS[method].layer_chart.title,
                                show_label=False,
                                visible=False,
                                elem_id=f"chart-{method}",
                            )
                with gr.Accordion("Attributions: which tokens drove the answer", open=False):
                    explained_method = gr.Dropdown(method_choices(METHODS), value=BASELINE, label="Method to explain")
                    explain_button = gr.Button("Explain")
                    attribution = gr.HighlightedText(label="Token attributions", show_legend=False)
                    attribution_note = gr.HTML(label="Attribution note")
                with gr.Accordion("Traces (JSON)", open=False):
                    traces_json = gr.JSON(label="traces")
                traces_state = gr.State({})
                # the API's knob parameters: hidden, empty by default, so an API call that leaves one out runs the
                # task's checkpoint default
                api_knobs = [
                    gr.Number(value=None, label=handlers.api_knob_label(method), visible=False)
                    for method in handlers.knob_methods
                ]
                api_compare = gr.Button("Compare (API)", visible=False)
            with gr.Tab("Layer usage", id=USAGE_TAB) as usage_tab:
                gr.Markdown(
                    "### Dev set\nHow often each layer runs on the task's dev set (recorded when the "
                    "checkpoint was published), and what each layer knows: a linear probe on the [CLS] state "
                    "and on the mean of the token states after every layer."
                )
                with gr.Row():
                    dev_task = gr.Dropdown(tasks, value=task_name, label="Task")
                    dev_button = gr.Button("Show dev-set layer usage")
                with gr.Row():
                    dev_chart = gr.Plot(label="Dev-set layer usage", show_label=False, elem_id="chart-dev-usage")
                    probe_chart_plot = gr.Plot(
                        label="What each layer knows", show_label=False, visible=False, elem_id="chart-probe"
                    )
                dev_note = gr.HTML(label="Dev-set note")
                gr.Markdown("### Logged queries")
                with gr.Row():
                    log_task = gr.Dropdown([ANY, *tasks], value=ANY, label="Task")
                    log_method = gr.Dropdown([(ANY, ANY), *method_choices(METHODS)], value=ANY, label="Method")
                    log_since = gr.Dropdown(SINCE_CHOICES, value="", label="Time range")
                with gr.Row():
                    log_button = gr.Button("Show logged layer usage")
                    export_button = gr.Button("Export report (CSV, JSON, HTML)")
                # filled in when the tab opens; hidden while the log has nothing to show, and the note says why
                with gr.Column(visible=False) as log_view:
                    log_chart = gr.Plot(label="Logged layer usage", show_label=False, elem_id="chart-logged-usage")
                    log_summary = gr.Dataframe(label="Summary", interactive=False, elem_id="logged-summary")
                log_note = gr.HTML(label="Log note", elem_id="log-note")
                export_files = gr.File(label="Report files", file_count="multiple", interactive=False)

        ui = DemoComponents(
            task=task,
            text=text,
            text_pair=text_pair,
            methods=methods,
            knobs=knobs,
            message=message,
            cards=cards,
            path_chart=path_chart,
            method_charts=method_charts,
            traces_json=traces_json,
            traces_state=traces_state,
            log_status=log_status,
            attribution=attribution,
            attribution_note=attribution_note,
            tabs=tabs,
            dev_task=dev_task,
            dev_chart=dev_chart,
            probe_chart=probe_chart_plot,
            dev_note=dev_note,
            log_task=log_task,
            log_view=log_view,
            log_chart=log_chart,
            log_summary=log_summary,
            log_note=log_note,
            export_files=export_files,
        )
        handlers.attach(ui)
        compare_inputs = [task, text, text_pair, methods, precision, *knobs.values()]
        log_filters = [log_task, log_method, log_since]
        # page-open, task-change and tab-open events answer over plain HTTP (queue=False): quick, and a headless
        # browser's
        # virtual clock waits for them, so a ?example=N link renders its result
        task.change(
            handlers.task_changed, task, [text_pair, methods, *knobs.values()], api_visibility="private", queue=False
        )
        page_triggers = [
            run.click,
            text.submit,
            text_pair.submit,
            precision.change,
            *[knob.release for knob in knobs.values()],
        ]
        gr.on(
            page_triggers,
            handlers.compare,
            compare_inputs,
            ui.compare_outputs,
            api_name="compare_in_page",  # named, so the public endpoint below keeps the name "compare"
            api_visibility="private",
            concurrency_limit=CONCURRENT_QUERIES,
            concurrency_id="compare",
        )
        api_precision = gr.Textbox(
            value=None, label=f"Precision: {', '.join(CHOICES)} (leave empty: {FP32})", visible=False
        )
        api_compare.click(
            handlers.api_compare(),
            [task, text, text_pair, methods, api_precision, *api_knobs],
            ui.compare_outputs,
            api_name="compare",
            concurrency_id="compare",
        )
        explain_button.click(
            handlers.explain, [explained_method, traces_state], [attribution, attribution_note], api_name="explain"
        )
        dev_button.click(
            handlers.dev_layer_usage,
            dev_task,
            [dev_chart, dev_note, probe_chart_plot],
            api_name="dev_layer_usage",
            concurrency_limit=1,
        )
        log_button.click(
            handlers.logged_layer_usage, log_filters, ui.logged_usage_outputs, api_name="logged_layer_usage"
        )
        usage_tab.select(
            handlers.logged_layer_usage, log_filters, ui.logged_usage_outputs, api_visibility="private", queue=False
        )
        export_button.click(handlers.export, [log_task, log_since], [export_files, log_note], api_name="export_report")
        page_outputs = [
            task,
            text,
            text_pair,
            *ui.compare_outputs,
            tabs,
            dev_task,
            dev_chart,
            dev_note,
            probe_chart_plot,
            log_task,
            *ui.logged_usage_outputs,
        ]
        demo.load(handlers.open_page, None, page_outputs, api_visibility="private", queue=False)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENT_QUERIES)
    return demo


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python app.py", description="The adaptive-depth BERT demo on a folder of checkpoints."
    )
    parser.add_argument(
        "--checkpoints",
        help=f"a folder laid out as <task>/<method>/config.json, e.g. training runs (default: ${CHECKPOINTS_ENV}, "
        "else the shipped assets/checkpoints)",
    )
    args = parser.parse_args(argv)
    catalog = read_catalog(
        args.checkpoints or os.environ.get(CHECKPOINTS_ENV) or SHIPPED_DIR
    )  # before anything starts: a bad folder is one line
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    build_demo(DemoHandlers(ModelCache(catalog), QueryLog.from_env())).launch(theme=THEME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
