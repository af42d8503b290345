"""Gradio demo: compare adaptive-depth methods on one input and see which layers ran, and why.

    python app.py            # http://127.0.0.1:7860, shipped checkpoints, no network

Widgets and their wiring only: models, the comparison and its HTML come from interpret.compare and
interpret.render, charts, attributions, the query log and reports from the rest of interpret/.
Every method-specific widget (a knob slider, a per-layer chart) is made by looping over
``core.methods.METHODS``. Handlers live on ``DemoHandlers`` so tests can call them as plain
functions. Query log: ``ADAPTIVE_BERT_QUERY_DB`` (a file), ``ADAPTIVE_BERT_DATA_DIR`` (a folder
for lasting data, e.g. a Space's /data) and ``ADAPTIVE_BERT_QUERY_LOG=off``; models run on
``ADAPTIVE_BERT_DEVICE`` (default: the best available). Visitors never see the server's paths:
those, and the errors that name them, go to the server log.

Links: ``?example=N`` runs example N; ``?usage=TASK`` opens the Layer usage tab on TASK's dev set.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import gradio as gr
import pandas as pd

from core.errors import UserError
from core.methods import BASELINE, METHODS
from core.precision import DESCRIPTIONS, FP32, PRECISIONS
from core.tasks import get_task
from interpret.attributions import attribute
from interpret.charts import layer_frequency_chart, layer_path_chart, method_chart, method_title, stacked
from interpret.compare import CHART_METHODS, ModelCache, compare_methods, knob_methods, knob_settings, methods_for
from interpret.querylog import QueryLog, parse_since, read_results
from interpret.render import attribution_caption, intro_markdown, message_html, results_html
from interpret.report import export_report, summary_table
from interpret.usage import dev_set_usage, precomputed_usage, usage_by_task

HERE = Path(__file__).resolve().parent
EXAMPLES_FILE = HERE / "assets" / "examples.json"
DEMO_TASKS = ("SST-2", "MRPC", "RTE", "STS-B")
QUEUE_SIZE = 128  # requests waiting beyond this are told the queue is full instead of piling up
CONCURRENT_QUERIES = 4
ANY = "any"
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])  # local fonts: no download
SINCE_CHOICES = [("all time", ""), ("last hour", "1h"), ("last day", "24h"), ("last week", "7d")]
PLOTS_PER_ROW = 2
EXPORTS_FOLDER = "adaptive-bert-exports"  # under the export root (the system's temporary folder by default)
EXPORTS_KEPT = 16  # older report folders are deleted at the next export ...
EXPORT_MAX_AGE_S = 3600  # ... and so is any older than this
PRECISION_INFO = (
    "every chosen method and the full model run at it; int8 and onnx-int8 are the fast ones on CPUs (onnx-* export each model's layers when first"
    " chosen: seconds per layer), bf16 needs a GPU or a newer CPU"
)
GRADIO_CACHE_CLEANUP = (3600, 3600)  # every hour, Gradio deletes the copies of files it served more than an hour ago
COMPARE_TAB, USAGE_TAB = "compare", "usage"
logger = logging.getLogger("adaptive_bert.app")


def load_examples() -> dict[str, list[dict]]:
    return json.loads(EXAMPLES_FILE.read_text(encoding="utf-8"))


def example_rows() -> list[list[str]]:
    """Examples as rows of (task, text, second sentence) for ``gr.Examples``."""
    return [[task, item["text"], item.get("text_pair", "")] for task, items in load_examples().items() if task in DEMO_TASKS for item in items]


def method_choices(methods) -> list[tuple[str, str]]:
    return [(method_title(method), method) for method in methods]


class DemoHandlers:
    """Every event handler of the demo, as plain methods over a model cache and a query log."""

    def __init__(self, models: ModelCache, query_log: QueryLog, export_root: Path | None = None):
        self.models = models
        self.query_log = query_log
        self.export_root = Path(export_root or tempfile.gettempdir()) / EXPORTS_FOLDER
        self._dev_usage: dict[tuple[str, str], pd.DataFrame] = {}

    @cached_property
    def knob_methods(self) -> list[str]:
        """The methods with a knob slider, in ``METHODS`` order: ``compare`` takes their values in this order."""
        return knob_methods(self.models, DEMO_TASKS)

    def api_compare(self) -> Callable[..., tuple]:
        """``compare`` for the API: every knob a keyword parameter (``<method>_threshold``) defaulting to None, so a call that
        leaves one out runs the task's checkpoint default (not the value a page slider happens to hold)."""
        knobs = [inspect.Parameter(f"{method}_threshold", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for method in self.knob_methods]
        plain = ["task", "text"]
        optional = ["text_pair", "methods", "precision"]
        signature = inspect.Signature(
            [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in plain]
            + [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for name in optional]
            + knobs
        )

        def compare_api(*args, **kwargs) -> tuple:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return self.compare(*bound.arguments.values())

        compare_api.__signature__ = signature
        compare_api.__doc__ = self.compare.__doc__
        return compare_api

    def api_knob_label(self, method: str) -> str:
        """The label of a knob's API parameter: left empty, the task's checkpoint default is used."""
        task = next(task for task in DEMO_TASKS if method in methods_for(task))
        return f"{knob_settings(self.models, task, method)['label']} (leave empty: the task's checkpoint default)"

    # --- main view -------------------------------------------------------------------------
    def task_changed(self, task: str) -> tuple:
        """Show the second box only for pair tasks (emptied for single-sentence ones), offer the task's methods, and set each
        knob slider to the task's range and default."""
        methods = methods_for(task)
        pair = get_task(task).pair
        sliders = [gr.update(**knob_settings(self.models, task, method)) for method in self.knob_methods]
        return gr.update(visible=pair) if pair else gr.update(visible=False, value=""), gr.update(choices=method_choices(methods), value=methods), *sliders

    def compare(
        self, task: str, text: str | None, text_pair: str | None, methods: list[str] | None, precision: str | None, *knob_values: float | None
    ) -> tuple:
        """Run every chosen method on the input at ``precision`` (None: fp32), with the knob values in ``knob_methods`` order
        (None: the task's default).

        Returns, in the order of ``compare_outputs`` in ``build_demo``: the message, the result cards, the layer-path
        chart, one per-layer chart per method in ``CHART_METHODS`` (shown only for the methods that ran), the traces as
        JSON, the traces for attributions, and the log status.
        """
        try:
            knobs = dict(zip(self.knob_methods, knob_values))
            result = compare_methods(self.models, task, text, text_pair, methods or [], knobs, precision=precision or FP32)
        except UserError as error:
            hidden = gr.update(value=None, visible=False)
            return (message_html([str(error)], []), "", hidden, *[hidden] * len(CHART_METHODS), [], {}, self.query_log.status)
        self.query_log.record(result.task, result.text, result.text_pair, result.settings(), result.traces, result.trained)
        charts = [None if (trace := result.trace(method)) is None else method_chart(trace) for method in CHART_METHODS]
        return (
            message_html([], result.notes),
            results_html(result.traces, result.trained, result.baseline_latency_ms, result.runs, result.fp32_baseline_latency_ms),
            gr.update(value=layer_path_chart(result.traces), visible=True),
            *[gr.update(value=chart, visible=chart is not None) for chart in charts],
            [trace.to_dict() for trace in result.traces],
            {trace.method: trace for trace in result.traces},
            self.query_log.status,
        )

    def explain(self, method: str | None, traces: dict | None) -> tuple:
        """Token attributions for one method's last answer, along the path it took."""
        trace = (traces or {}).get(method or "")
        if trace is None:
            return [], message_html(["run a comparison first, then pick one of its methods"], [])
        result = attribute(self.models.get(trace.task, trace.method), trace)
        return result.tokens, message_html([], [attribution_caption(trace, result)])

    # --- layer usage -----------------------------------------------------------------------
    def dev_layer_usage(self, task: str, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:
        """Layer-frequency histogram on the task's dev set: recorded at training time, or computed once and cached."""
        frames, notes = [], []
        for method in methods_for(task):
            model = self.models.get(task, method)
            usage = precomputed_usage(model)
            if usage is None:
                key = (get_task(task).name, method)
                if key not in self._dev_usage:
                    try:
                        self._dev_usage[key] = dev_set_usage(model)
                    except UserError as error:  # the server's paths stay in the server log
                        logger.warning("dev-set usage of %s on %s: %s", method, task, error)
                        notes.append(f"{method_title(method)}: no dev-set usage was recorded with its checkpoint, and the dev set is not on this server.")
                        continue
                usage = self._dev_usage[key]
            frames.append(usage)
        if not frames:
            return None, message_html([], notes or ["no dev-set layer usage available"])
        chart = layer_frequency_chart(pd.concat(frames, ignore_index=True), f"{get_task(task).name}: layer usage on the dev set")
        return chart, message_html([], notes)

    def _logged_rows(self, task: str, method: str | None, since: str) -> list[dict]:
        """The logged results matching the filters; a UserError only for what the visitor typed (never naming a path)."""
        start = parse_since(since)
        task_name = None if task == ANY else get_task(task).name
        if not self.query_log.path.is_file():
            return []
        try:
            return read_results(self.query_log.path, task=task_name, method=None if method in (None, ANY) else method, since=start)
        except UserError as error:
            logger.warning("reading the query log: %s", error)
            raise UserError("the query log cannot be read right now (the server log says why)") from None

    def logged_layer_usage(self, task: str, method: str, since: str) -> tuple:
        """Layer-frequency histogram and summary over the logged queries, filtered by task, method and time."""
        if not self.query_log.enabled:
            return None, None, message_html([], [self.query_log.status])
        try:
            rows = self._logged_rows(task, method, since)
        except UserError as error:
            return None, None, message_html([str(error)], [])
        if not rows:
            return None, summary_table(rows), message_html([], ["no logged queries match these filters"])
        charts = [
            layer_frequency_chart(usage, f"{name}: layer usage over {usage['inputs'].max()} logged queries per method")
            for name, usage in usage_by_task(rows).items()
        ]
        return stacked(charts), summary_table(rows), message_html([], [f"{len(rows)} logged results (one per query and method)"])

    def prune_exports(self, keep: int) -> None:
        """Delete report folders older than ``EXPORT_MAX_AGE_S`` and all but the newest ``keep`` (Gradio serves its own copies)."""
        if not self.export_root.is_dir():
            return
        folders = sorted((path for path in self.export_root.iterdir() if path.is_dir()), key=lambda path: path.stat().st_mtime, reverse=True)
        now = time.time()
        for rank, folder in enumerate(folders):
            if rank >= keep or now - folder.stat().st_mtime > EXPORT_MAX_AGE_S:
                shutil.rmtree(folder, ignore_errors=True)

    def export(self, task: str, since: str) -> tuple:
        """Write the layer-usage report (CSV, JSON, HTML) for the logged queries into a fresh folder and offer it for download."""
        if not self.query_log.enabled:
            return None, message_html([], [self.query_log.status])
        try:
            parse_since(since)
            task_name = None if task == ANY else get_task(task).name
        except UserError as error:
            return None, message_html([str(error)], [])
        if not self.query_log.path.is_file():
            return None, message_html([], ["no queries logged yet: nothing to export"])
        try:
            self.prune_exports(keep=EXPORTS_KEPT - 1)  # with the new one, at most EXPORTS_KEPT
            self.export_root.mkdir(parents=True, exist_ok=True)
            files = export_report(self.query_log.path, tempfile.mkdtemp(prefix="report-", dir=self.export_root), task=task_name, since=since)
        except (UserError, OSError) as error:
            logger.warning("export: %s", error)
            return None, message_html(["the report could not be written (the server log says why)"], [])
        return [str(path) for path in files.paths()], message_html([], [f"report written: {files.rows} result rows"])

    # --- page load -------------------------------------------------------------------------
    def open_page(self, request: gr.Request) -> tuple:
        """Links that show a result when the page opens: ``?example=N`` fills in example N (1-based) and runs it;
        ``?usage=TASK`` opens the Layer usage tab with TASK's dev-set chart.

        Returns the task, text and second sentence, what ``compare`` returns, then the selected tab, the dev-set task,
        chart and note.
        """
        rows = example_rows()
        params = request.query_params if request is not None else {}
        wanted, usage_task = params.get("example", ""), params.get("usage", "")
        untouched_usage = (gr.update(), gr.update(), gr.update(), gr.update())
        if usage_task:
            try:
                name = get_task(usage_task).name
                if name not in DEMO_TASKS:
                    raise UserError(f"the demo shows {', '.join(DEMO_TASKS)}, not {name}")
            except UserError as error:
                usage = (gr.Tabs(selected=USAGE_TAB), gr.update(), None, message_html([str(error)], []))
            else:
                usage = (gr.Tabs(selected=USAGE_TAB), name, *self.dev_layer_usage(name))
        else:
            usage = untouched_usage
        if wanted.isdigit() and 1 <= int(wanted) <= len(rows):
            task, text, text_pair = rows[int(wanted) - 1]
            return (task, text, text_pair, *self.compare(task, text, text_pair, methods_for(task), FP32, *[None] * len(self.knob_methods)), *usage)
        message = message_html([f"there is no example {wanted!r}: use 1 to {len(rows)}"], []) if wanted else gr.update()
        return (*[gr.update()] * 3, message, *[gr.update()] * (4 + len(CHART_METHODS)), self.query_log.status, *usage)


def build_demo(handlers: DemoHandlers) -> gr.Blocks:
    """The Blocks app with its queue; API endpoints: compare, explain, dev_layer_usage, logged_layer_usage, export_report."""
    task_name = DEMO_TASKS[0]
    chosen = methods_for(task_name)
    with gr.Blocks(title="Adaptive-depth BERT", analytics_enabled=False, delete_cache=GRADIO_CACHE_CLEANUP) as demo:
        gr.Markdown(intro_markdown())
        log_status = gr.Markdown(handlers.query_log.status, label="Query log status", elem_id="log-status")
        with gr.Tabs(selected=COMPARE_TAB) as tabs:
            with gr.Tab("Compare methods", id=COMPARE_TAB):
                with gr.Row():
                    with gr.Column(scale=3):
                        task = gr.Dropdown(list(DEMO_TASKS), value=task_name, label="Task")
                        text = gr.Textbox(label="Sentence", lines=2, placeholder="Type a sentence")
                        text_pair = gr.Textbox(label="Second sentence", lines=2, visible=get_task(task_name).pair, placeholder="Type the second sentence")
                        methods = gr.CheckboxGroup(method_choices(chosen), value=chosen, label="Methods to compare")
                        precision = gr.Radio(
                            [(DESCRIPTIONS[name], name) for name in PRECISIONS], value=FP32, label="Precision", info=PRECISION_INFO, elem_id="precision"
                        )
                        run = gr.Button("Compare", variant="primary", elem_id="compare-button")
                    with gr.Column(scale=2):
                        knobs = [gr.Slider(**knob_settings(handlers.models, task_name, method), elem_id=f"knob-{method}") for method in handlers.knob_methods]
                        gr.Examples(example_rows(), inputs=[task, text, text_pair], label="Examples", examples_per_page=5)
                message = gr.HTML(label="Message", elem_id="message")
                results = gr.HTML(label="Results", elem_id="results")
                # charts stay hidden until a comparison draws them, and a method that did not run shows no empty box
                path_plot = gr.Plot(label="Layer path", show_label=False, visible=False, elem_id="chart-path")
                plots = []
                for start in range(0, len(CHART_METHODS), PLOTS_PER_ROW):
                    with gr.Row():
                        for method in CHART_METHODS[start : start + PLOTS_PER_ROW]:
                            plots.append(gr.Plot(label=METHODS[method].layer_chart.title, show_label=False, visible=False, elem_id=f"chart-{method}"))
                with gr.Accordion("Attributions: which tokens drove the answer", open=False):
                    explained_method = gr.Dropdown(method_choices(METHODS), value=BASELINE, label="Method to explain")
                    explain_button = gr.Button("Explain")
                    attribution = gr.HighlightedText(label="Token attributions", show_legend=False)
                    attribution_message = gr.HTML(label="Attribution note")
                with gr.Accordion("Traces (JSON)", open=False):
                    traces_json = gr.JSON(label="traces")
                traces_state = gr.State({})
                # the API's knob parameters: hidden, empty by default, so an API call that leaves one out runs the task's checkpoint default
                api_knobs = [gr.Number(value=None, label=handlers.api_knob_label(method), visible=False) for method in handlers.knob_methods]
                api_compare = gr.Button("Compare (API)", visible=False)
            with gr.Tab("Layer usage", id=USAGE_TAB):
                gr.Markdown("### Dev set\nHow often each layer runs on the task's dev set (recorded at training time, or computed here once).")
                with gr.Row():
                    dev_task = gr.Dropdown(list(DEMO_TASKS), value=task_name, label="Task")
                    dev_button = gr.Button("Show dev-set layer usage")
                dev_plot = gr.Plot(label="Dev-set layer usage", show_label=False, elem_id="chart-dev-usage")
                dev_message = gr.HTML(label="Dev-set note")
                gr.Markdown("### Logged queries")
                with gr.Row():
                    log_task = gr.Dropdown([ANY, *DEMO_TASKS], value=ANY, label="Task")
                    log_method = gr.Dropdown([(ANY, ANY), *method_choices(METHODS)], value=ANY, label="Method")
                    log_since = gr.Dropdown(SINCE_CHOICES, value="", label="Time range")
                with gr.Row():
                    log_button = gr.Button("Show logged layer usage")
                    export_button = gr.Button("Export report (CSV, JSON, HTML)")
                log_plot = gr.Plot(label="Logged layer usage", show_label=False, elem_id="chart-logged-usage")
                log_table = gr.Dataframe(label="Summary", interactive=False)
                log_message = gr.HTML(label="Log note")
                export_files = gr.File(label="Report files", file_count="multiple", interactive=False)

        compare_outputs = [message, results, path_plot, *plots, traces_json, traces_state, log_status]
        compare_inputs = [task, text, text_pair, methods, precision, *knobs]
        # page-open and task-change events answer over plain HTTP (queue=False): quick, and a headless browser's
        # virtual clock waits for them, so a ?example=N link renders its result
        task.change(handlers.task_changed, task, [text_pair, methods, *knobs], api_visibility="private", queue=False)
        page_triggers = [run.click, text.submit, text_pair.submit, precision.change, *[knob.release for knob in knobs]]
        gr.on(
            page_triggers,
            handlers.compare,
            compare_inputs,
            compare_outputs,
            api_name="compare_in_page",  # named, so the public endpoint below keeps the name "compare"
            api_visibility="private",
            concurrency_limit=CONCURRENT_QUERIES,
            concurrency_id="compare",
        )
        api_precision = gr.Textbox(value=None, label="Precision: fp32, bf16 or int8 (leave empty: fp32)", visible=False)
        api_compare.click(
            handlers.api_compare(), [task, text, text_pair, methods, api_precision, *api_knobs], compare_outputs, api_name="compare", concurrency_id="compare"
        )
        explain_button.click(handlers.explain, [explained_method, traces_state], [attribution, attribution_message], api_name="explain")
        dev_button.click(handlers.dev_layer_usage, dev_task, [dev_plot, dev_message], api_name="dev_layer_usage", concurrency_limit=1)
        log_button.click(handlers.logged_layer_usage, [log_task, log_method, log_since], [log_plot, log_table, log_message], api_name="logged_layer_usage")
        export_button.click(handlers.export, [log_task, log_since], [export_files, log_message], api_name="export_report")
        demo.load(
            handlers.open_page, None, [task, text, text_pair, *compare_outputs, tabs, dev_task, dev_plot, dev_message], api_visibility="private", queue=False
        )
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENT_QUERIES)
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    build_demo(DemoHandlers(ModelCache(), QueryLog.from_env())).launch(theme=THEME)


if __name__ == "__main__":
    main()
