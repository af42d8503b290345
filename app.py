"""Gradio demo: compare adaptive-depth methods on one input and see which layers ran, and why.

    python app.py            # http://127.0.0.1:7860, shipped checkpoints, no network

UI only: models come from core/, charts, attributions, the query log and reports from
interpret/. Handlers live on ``DemoHandlers`` so tests can call them as plain functions.
Query log: ``ADAPTIVE_BERT_QUERY_DB`` (default queries.db beside this file) and
``ADAPTIVE_BERT_QUERY_LOG=off``.
"""
from __future__ import annotations

import html
import json
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd

from core.checkpoint import load_for_task
from core.errors import UserError
from core.methods import METHODS
from core.model import AdaptiveModel
from core.tasks import get_task
from core.trace import Trace
from interpret.attributions import attribute
from interpret.charts import entropy_chart, halting_chart, layer_frequency_chart, layer_path_chart, method_title, planner_chart, stacked
from interpret.querylog import QueryLog, parse_since, read_results
from interpret.report import export_report, summary_table
from interpret.usage import dev_set_usage, precomputed_usage, usage_by_task

HERE = Path(__file__).resolve().parent
EXAMPLES_FILE = HERE / "assets" / "examples.json"
DEMO_TASKS = ("SST-2", "MRPC", "RTE", "STS-B")
MAX_CHARS = 10_000  # cut before tokenising; the model's own token limit applies after that
QUEUE_SIZE = 128  # requests waiting beyond this are told the queue is full instead of piling up
CONCURRENT_QUERIES = 4
ANY = "any"
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])  # local fonts: no download
SINCE_CHOICES = [("all time", ""), ("last hour", "1h"), ("last day", "24h"), ("last week", "7d")]
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # Unicode Cc except tab and line breaks
MARKUP = re.compile(r"<\s*/?\s*[a-zA-Z!][^>]*>|&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);")


def methods_for(task: str) -> list[str]:
    """The methods that can run a task (DeeBERT and DACT need class probabilities, so no regression)."""
    regression = get_task(task).is_regression
    return [name for name, method in METHODS.items() if method.supports_regression or not regression]


@dataclass
class LoadedModel:
    model: AdaptiveModel
    lock: threading.Lock = field(default_factory=threading.Lock)  # the fast tokenizer is not safe to share between threads


class ModelCache:
    """Loads each (task, method) once and hands out the same model afterwards."""

    def __init__(self, load: Callable[[str, str], AdaptiveModel] = load_for_task):
        self._load = load
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, task: str, method: str) -> LoadedModel:
        key = (get_task(task).name, method)
        with self._lock:
            if key not in self._models:
                model = self._load(*key)
                # one throw-away prediction, so the first real query's latency is not inflated by one-off setup costs
                model.predict("warm up", "warm up" if model.config.pair else None)
                self._models[key] = LoadedModel(model)
            return self._models[key]


def load_examples() -> dict[str, list[dict]]:
    return json.loads(EXAMPLES_FILE.read_text(encoding="utf-8"))


def example_rows() -> list[list[str]]:
    """Examples as rows of (task, text, second sentence) for ``gr.Examples``."""
    return [[task, item["text"], item.get("text_pair", "")] for task, items in load_examples().items() if task in DEMO_TASKS for item in items]


def clean_text(value: str | None, name: str) -> tuple[str, list[str]]:
    """The text as the model will read it, and notes for the user about what was changed or noticed."""
    text, notes = value or "", []
    controls = CONTROL_CHARACTERS.findall(text)
    if controls:
        text = CONTROL_CHARACTERS.sub(" ", text)
        notes.append(f"{name}: removed {len(controls)} control character(s).")
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS]
        notes.append(f"{name}: longer than {MAX_CHARS:,} characters, so only the first {MAX_CHARS:,} were kept.")
    if MARKUP.search(text):
        notes.append(f"{name}: contains markup (HTML tags or entities); it is read as plain text and shown escaped, never rendered.")
    return text, notes


def message_html(errors: list[str], notes: list[str]) -> str:
    """Errors and notes as escaped HTML (they may quote the user's text)."""
    parts = [f'<p class="demo-error" style="color:#b91c1c"><b>Error:</b> {html.escape(text)}</p>' for text in errors]
    parts += [f'<p class="demo-note" style="color:#92400e">{html.escape(text)}</p>' for text in notes]
    return "\n".join(parts)


def _layers(layers: list[int]) -> str:
    return ", ".join(map(str, layers)) if layers else "none"


def result_card(trace: Trace, trained: bool, full_latency_ms: float | None) -> str:
    """One method's answer as an HTML card; everything shown comes from the trace."""
    if trace.probabilities:
        answer = html.escape(str(trace.prediction))
        odds = "".join(
            f'<div>{html.escape(label)}: {p:.3f} <span style="display:inline-block;height:.6em;width:{p * 6:.2f}em;background:#2563eb"></span></div>'
            for label, p in trace.probabilities.items()
        )
    else:
        answer, odds = f"score {trace.prediction:.3f}", ""
    measured = f"{full_latency_ms / trace.latency_ms:.2f}×" if full_latency_ms and trace.latency_ms > 0 else "n/a"
    exit_text = f"after layer {trace.exit_layer}" if trace.exit_layer is not None else "none (ran to the end)"
    badge = "" if trained else ' <span style="color:#b91c1c">(untrained)</span>'
    return f"""<div class="result-card" data-method="{html.escape(trace.method)}" style="flex:1;min-width:12rem;border:1px solid #e5e7eb;border-radius:8px;padding:.6rem">
<h4 style="margin:0 0 .3rem 0">{html.escape(method_title(trace.method))}{badge}</h4>
<div class="prediction" style="font-size:1.3em;font-weight:bold">{answer}</div>{odds}
<div>layers executed: {_layers(trace.layers_executed)} ({len(trace.layers_executed)} of {trace.num_layers})</div>
<div>skipped: {_layers(trace.layers_skipped)}</div>
<div>exit: {exit_text}</div>
<div>latency: {trace.latency_ms:.1f} ms</div>
<div>speed-up vs full: {measured} measured, {trace.expected_speedup:.2f}× in layers</div>
</div>"""


def results_html(traces: list[Trace], trained: dict[str, bool], full_latency_ms: float | None) -> str:
    first = traces[0]
    asked = html.escape(first.text) + ("" if first.text_pair is None else " ‖ " + html.escape(first.text_pair))
    cards = "".join(result_card(trace, trained[trace.method], full_latency_ms) for trace in traces)
    return f'<div class="results"><p class="asked"><b>Input:</b> {asked}</p><div style="display:flex;gap:.6rem;flex-wrap:wrap">{cards}</div></div>'


def _by_method(traces: list[Trace], method: str) -> Trace | None:
    return next((trace for trace in traces if trace.method == method), None)


class DemoHandlers:
    """Every event handler of the demo, as plain methods over a model cache and a query log."""

    def __init__(self, models: ModelCache, query_log: QueryLog, export_root: Path | None = None):
        self.models = models
        self.query_log = query_log
        self.export_root = Path(export_root or tempfile.gettempdir())
        self._dev_usage: dict[tuple[str, str], pd.DataFrame] = {}

    # --- main view -------------------------------------------------------------------------
    def slider_settings(self, task: str, method: str) -> dict:
        """Range and default of a method's threshold slider for a task; hidden where the method cannot run the task."""
        if method not in methods_for(task):
            return {"visible": False}
        model = self.models.get(task, method).model
        low, high = model.method.threshold_range
        return {"visible": True, "minimum": round(low, 4), "maximum": round(high, 4), "value": round(model.default_threshold(), 4)}

    def task_changed(self, task: str) -> tuple:
        """Show the second box only for pair tasks, offer the task's methods, and set the sliders to the models' defaults."""
        methods = methods_for(task)
        sliders = [gr.update(**self.slider_settings(task, method)) for method in ("deebert", "dpbert")]
        return gr.update(visible=get_task(task).pair), gr.update(choices=[(method_title(m), m) for m in methods], value=methods), *sliders

    def compare(self, task: str, text: str | None, text_pair: str | None, methods: list[str] | None, deebert_threshold: float | None, dpbert_threshold: float | None) -> tuple:
        """Run every chosen method on the input.

        Returns, in the order of ``compare_outputs`` in ``build_demo``: the message, the result cards, the layer-path,
        entropy, halting and planner charts, the traces as JSON, the traces for attributions, and the log status.
        """
        try:
            traces, trained, full_latency, notes = self._run(task, text, text_pair, methods or [], {"deebert": deebert_threshold, "dpbert": dpbert_threshold})
        except UserError as error:
            return (message_html([str(error)], []), "", None, None, None, None, [], {}, self.query_log.status)
        entropy, halting, planner = (_by_method(traces, method) for method in ("deebert", "dact", "dpbert"))
        return (
            message_html([], notes),
            results_html(traces, trained, full_latency),
            layer_path_chart(traces),
            None if entropy is None else entropy_chart(entropy),
            None if halting is None else halting_chart(halting),
            None if planner is None else planner_chart(planner),
            [trace.to_dict() for trace in traces],
            {trace.method: trace for trace in traces},
            self.query_log.status,
        )

    def _run(self, task: str, text: str | None, text_pair: str | None, methods: list[str], thresholds: dict[str, float | None]) -> tuple[list[Trace], dict[str, bool], float | None, list[str]]:
        spec = get_task(task)
        if not methods:
            raise UserError("choose at least one method to compare")
        unknown = [method for method in methods if method not in methods_for(spec.name)]
        if unknown:
            raise UserError(f"{', '.join(unknown)} cannot run {spec.name}; choose from {', '.join(methods_for(spec.name))}")
        text, notes = clean_text(text, "text")
        if not text.strip():
            raise UserError("the text is empty: type a sentence")
        pair = None
        if spec.pair:
            pair, pair_notes = clean_text(text_pair, "second sentence")
            notes += pair_notes
            if not pair.strip():
                raise UserError(f"{spec.name} compares two sentences: type the second sentence too")
        traces, trained, token_limits = [], {}, set()
        full_latency = None
        for method in methods if "full" in methods else ["full", *methods]:  # the full model is the speed-up baseline
            loaded = self.models.get(spec.name, method)
            with loaded.lock:
                trace = loaded.model.predict(text, pair, threshold=thresholds.get(method))[0]
            if method == "full":
                full_latency = trace.latency_ms
            if method in methods:
                traces.append(trace)
                trained[method] = loaded.model.config.trained
            if trace.truncated:
                token_limits.add(loaded.model.max_length)
        if token_limits:
            notes.append(f"The input is longer than the model's limit of {min(token_limits)} tokens: only the first part was read (truncated).")
        untrained = [method_title(method) for method, is_trained in trained.items() if not is_trained]
        if untrained:
            notes.append(f"Untrained heads for {spec.name}: {', '.join(untrained)}. No trained checkpoint is shipped, so these predictions are arbitrary.")
        if "full" not in methods:
            notes.append("The full model was also run (not shown) to measure the speed-up.")
        settings = {"thresholds": {trace.method: trace.threshold for trace in traces}, "early_exit": True}
        self.query_log.record(spec.name, text, pair, settings, traces, trained)
        return traces, trained, full_latency, notes

    def explain(self, method: str | None, traces: dict[str, Trace] | None) -> tuple:
        """Token attributions for one method's last answer, along the path it took."""
        trace = (traces or {}).get(method or "")
        if trace is None:
            return [], message_html(["run a comparison first, then pick one of its methods"], [])
        loaded = self.models.get(trace.task, trace.method)
        with loaded.lock:
            result = attribute(loaded.model, trace)
        caption = (
            f"Integrated gradients for {method_title(trace.method)}'s answer {result.target!r} on the layers it ran "
            f"({_layers(trace.layers_executed)}); positive scores push towards it, negative ones away. Convergence error {result.convergence_delta:.2g}."
        )
        return result.tokens, message_html([], [caption])

    # --- layer usage -----------------------------------------------------------------------
    def dev_layer_usage(self, task: str, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:
        """Layer-frequency histogram on the task's dev set: recorded at training time, or computed once and cached."""
        frames, notes = [], []
        for method in methods_for(task):
            model = self.models.get(task, method).model
            usage = precomputed_usage(model)
            if usage is None:
                key = (get_task(task).name, method)
                if key not in self._dev_usage:
                    try:
                        self._dev_usage[key] = dev_set_usage(model)
                    except UserError as error:
                        notes.append(f"{method_title(method)}: {error}")
                        continue
                usage = self._dev_usage[key]
            frames.append(usage)
        if not frames:
            return None, message_html([], notes or ["no dev-set layer usage available"])
        chart = layer_frequency_chart(pd.concat(frames, ignore_index=True), f"{get_task(task).name}: layer usage on the dev set")
        return chart, message_html([], notes)

    def logged_layer_usage(self, task: str, method: str, since: str) -> tuple:
        """Layer-frequency histogram and summary over the logged queries, filtered by task, method and time."""
        if not self.query_log.enabled:
            return None, None, message_html([], [self.query_log.status])
        try:
            rows = read_results(self.query_log.path, task=None if task == ANY else get_task(task).name, method=None if method == ANY else method, since=parse_since(since))
        except UserError as error:
            return None, None, message_html([str(error)], [])
        if not rows:
            return None, summary_table(rows), message_html([], ["no logged queries match these filters"])
        charts = [layer_frequency_chart(usage, f"{name}: layer usage over {usage['inputs'].max()} logged queries per method") for name, usage in usage_by_task(rows).items()]
        return stacked(charts), summary_table(rows), message_html([], [f"{len(rows)} logged results (one per query and method)"])

    def export(self, task: str, since: str) -> tuple:
        """Write the layer-usage report (CSV, JSON, HTML) for the logged queries into a fresh folder and offer it for download."""
        if not self.query_log.enabled:
            return None, message_html([], [self.query_log.status])
        try:
            files = export_report(self.query_log.path, tempfile.mkdtemp(prefix="report-", dir=self.export_root), task=None if task == ANY else task, since=since)
        except UserError as error:
            return None, message_html([str(error)], [])
        return [str(path) for path in files.paths()], message_html([], [f"report written: {files.rows} result rows"])

    # --- page load -------------------------------------------------------------------------
    def open_page(self, request: gr.Request) -> tuple:
        """With ``?example=N`` in the address, fill in example N (1-based) and run it, so a link shows a result.

        Returns the task, text and second sentence, then what ``compare`` returns.
        """
        rows = example_rows()
        wanted = request.query_params.get("example", "") if request is not None else ""
        if wanted.isdigit() and 1 <= int(wanted) <= len(rows):
            task, text, text_pair = rows[int(wanted) - 1]
            return (task, text, text_pair, *self.compare(task, text, text_pair, methods_for(task), None, None))
        message = message_html([f"there is no example {wanted!r}: use 1 to {len(rows)}"], []) if wanted else gr.update()
        return (*[gr.update()] * 3, message, *[gr.update()] * 7, self.query_log.status)


def build_demo(handlers: DemoHandlers) -> gr.Blocks:
    """The Blocks app with its queue; API endpoints: compare, explain, dev_layer_usage, logged_layer_usage, export_report."""
    task_name = DEMO_TASKS[0]
    with gr.Blocks(title="Adaptive-depth BERT", analytics_enabled=False) as demo:
        gr.Markdown(
            "# Adaptive-depth BERT\n"
            "Type a sentence (or a pair), pick the methods, and see which transformer layers each one spends on it: "
            "**DeeBERT** exits early when an off-ramp is confident, **DACT-BERT** halts once its answer can no longer change, "
            "**DPBERT** bypasses layers anywhere."
        )
        log_status = gr.Markdown(handlers.query_log.status, label="Query log status", elem_id="log-status")
        with gr.Tab("Compare methods"):
            with gr.Row():
                with gr.Column(scale=3):
                    task = gr.Dropdown(list(DEMO_TASKS), value=task_name, label="Task")
                    text = gr.Textbox(label="Sentence", lines=2, placeholder="Type a sentence")
                    text_pair = gr.Textbox(label="Second sentence", lines=2, visible=get_task(task_name).pair, placeholder="Type the second sentence")
                    methods = gr.CheckboxGroup([(method_title(m), m) for m in methods_for(task_name)], value=methods_for(task_name), label="Methods to compare")
                    run = gr.Button("Compare", variant="primary", elem_id="compare-button")
                with gr.Column(scale=2):
                    deebert_threshold = gr.Slider(label="DeeBERT entropy threshold S (exit when an off-ramp's entropy is below it)", step=0.01, **handlers.slider_settings(task_name, "deebert"))
                    dpbert_threshold = gr.Slider(label="DPBERT planner threshold (run a layer when its planner probability is above it)", step=0.01, **handlers.slider_settings(task_name, "dpbert"))
                    gr.Examples(example_rows(), inputs=[task, text, text_pair], label="Examples", examples_per_page=5)
            message = gr.HTML(label="Message", elem_id="message")
            results = gr.HTML(label="Results", elem_id="results")
            path_plot = gr.Plot(label="Layer path", show_label=False)
            with gr.Row():
                entropy_plot = gr.Plot(label="DeeBERT: entropy per layer", show_label=False)
                halting_plot = gr.Plot(label="DACT-BERT: halting bounds", show_label=False)
            planner_plot = gr.Plot(label="DPBERT: planner decisions", show_label=False)
            with gr.Accordion("Attributions: which tokens drove the answer", open=False):
                explained_method = gr.Dropdown([(method_title(m), m) for m in METHODS], value="full", label="Method to explain")
                explain_button = gr.Button("Explain")
                attribution = gr.HighlightedText(label="Token attributions", show_legend=False)
                attribution_message = gr.HTML(label="Attribution note")
            with gr.Accordion("Traces (JSON)", open=False):
                traces_json = gr.JSON(label="traces")
            traces_state = gr.State({})
        with gr.Tab("Layer usage"):
            gr.Markdown("### Dev set\nHow often each layer runs on the task's dev set (recorded at training time, or computed here once).")
            with gr.Row():
                dev_task = gr.Dropdown(list(DEMO_TASKS), value=task_name, label="Task")
                dev_button = gr.Button("Show dev-set layer usage")
            dev_plot = gr.Plot(label="Dev-set layer usage", show_label=False)
            dev_message = gr.HTML(label="Dev-set note")
            gr.Markdown("### Logged queries")
            with gr.Row():
                log_task = gr.Dropdown([ANY, *DEMO_TASKS], value=ANY, label="Task")
                log_method = gr.Dropdown([(ANY, ANY), *[(method_title(m), m) for m in METHODS]], value=ANY, label="Method")
                log_since = gr.Dropdown(SINCE_CHOICES, value="", label="Time range")
            with gr.Row():
                log_button = gr.Button("Show logged layer usage")
                export_button = gr.Button("Export report (CSV, JSON, HTML)")
            log_plot = gr.Plot(label="Logged layer usage", show_label=False)
            log_table = gr.Dataframe(label="Summary", interactive=False)
            log_message = gr.HTML(label="Log note")
            export_files = gr.File(label="Report files", file_count="multiple", interactive=False)

        compare_outputs = [message, results, path_plot, entropy_plot, halting_plot, planner_plot, traces_json, traces_state, log_status]
        compare_inputs = [task, text, text_pair, methods, deebert_threshold, dpbert_threshold]
        # page-open and task-change events answer over plain HTTP (queue=False): quick, and a headless browser's
        # virtual clock waits for them, so a ?example=N link renders its result
        task.change(handlers.task_changed, task, [text_pair, methods, deebert_threshold, dpbert_threshold], api_visibility="private", queue=False)
        gr.on([run.click, text.submit, text_pair.submit], handlers.compare, compare_inputs, compare_outputs, api_name="compare", concurrency_limit=CONCURRENT_QUERIES, concurrency_id="compare")
        gr.on([deebert_threshold.release, dpbert_threshold.release], handlers.compare, compare_inputs, compare_outputs, api_visibility="private", concurrency_id="compare")
        explain_button.click(handlers.explain, [explained_method, traces_state], [attribution, attribution_message], api_name="explain")
        dev_button.click(handlers.dev_layer_usage, dev_task, [dev_plot, dev_message], api_name="dev_layer_usage", concurrency_limit=1)
        log_button.click(handlers.logged_layer_usage, [log_task, log_method, log_since], [log_plot, log_table, log_message], api_name="logged_layer_usage")
        export_button.click(handlers.export, [log_task, log_since], [export_files, log_message], api_name="export_report")
        demo.load(handlers.open_page, None, [task, text, text_pair, *compare_outputs], api_visibility="private", queue=False)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=CONCURRENT_QUERIES)
    return demo


def main() -> None:
    build_demo(DemoHandlers(ModelCache(), QueryLog.from_env())).launch(theme=THEME)


if __name__ == "__main__":
    main()
