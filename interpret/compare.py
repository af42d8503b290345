"""Several methods on one input, as the demo compares them: the model cache, input cleaning and the comparison.

The cache serves one folder of checkpoints (``core.catalog``): its tasks, GLUE or one's own, and
per task the methods that folder holds. Nothing here names a method: which methods have a knob
and what its range is, and which one is the speed-up baseline all come from ``core.methods``.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from core.catalog import CatalogTask
from core.checkpoint import load_checkpoint
from core.devices import resolve_device
from core.errors import UserError
from core.inputs import has_visible_text, reading_notes
from core.methods import BASELINE, METHODS
from core.model import AdaptiveModel
from core.precision import CHOICES, FASTEST, FP32, check_precision
from core.tasks import TaskSpec, canonical_task
from core.trace import Trace
from interpret.charts import method_title, shown_score

PROJECT = Path(__file__).resolve().parent.parent
DEVICE_ENV = "ADAPTIVE_BERT_DEVICE"  # where the demo's models run (default: the best available)
REPEATS = (
    5  # runs per method and input; latencies are their median (a single run of one short forward pass is mostly noise)
)
MAX_CHARS = 10_000  # cut before tokenising; the model's own token limit applies after that
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # Unicode Cc except tab and line breaks
MARKUP = re.compile(r"<\s*/?\s*[a-zA-Z!][^>]*>|&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);")
CHART_METHODS = [
    name for name, method in METHODS.items() if method.layer_chart is not None
]  # one per-layer chart each


def load_on_device(folder: Path) -> AdaptiveModel:
    """A checkpoint on ``ADAPTIVE_BERT_DEVICE``, by default the best device present."""
    return load_checkpoint(folder).to(resolve_device(os.environ.get(DEVICE_ENV)))


class ModelCache:
    """The tasks of a checkpoint folder.

    Loads each (task, method) once and hands out the same model afterwards, at each precision asked for.

    ``load(task, method)`` defaults to the catalog's checkpoint of that method on ``ADAPTIVE_BERT_DEVICE``.
    The fp32 model is loaded first and the others are converted from it (``AdaptiveModel.with_precision``).
    Predictions on a shared model may run at the same time: the engine keeps its state per call
    and installs no hooks, and ``AdaptiveModel`` serialises its own tokenizer.
    """

    def __init__(self, catalog: Mapping[str, CatalogTask], load: Callable[[str, str], AdaptiveModel] | None = None):
        self.catalog = dict(catalog)
        self._load = load or self._load_checkpoint
        self._models: dict[tuple[str, str, str], AdaptiveModel] = {}
        self._lock = threading.Lock()

    @property
    def tasks(self) -> list[str]:
        """The folder's tasks by name, in the catalog's order."""
        return list(self.catalog)

    def task(self, name: str) -> CatalogTask:
        """A served task by name, case-insensitively and in GLUE's spellings too (``sst2``).

        Any other name is the user's to fix.
        """
        wanted = canonical_task((name or "").strip()).lower()
        found = next((task for served, task in self.catalog.items() if served.lower() == wanted), None)
        if found is None:
            raise UserError(f"unknown task {name!r}: this demo serves {', '.join(self.catalog)}")
        return found

    def spec(self, task: str) -> TaskSpec:
        """A served task's name, labels and whether it takes a pair, as its checkpoints record them."""
        return self.task(task).spec

    def methods_for(self, task: str) -> list[str]:
        """The methods the folder holds a checkpoint of for the task, in ``METHODS`` order."""
        return self.task(task).methods

    def _load_checkpoint(self, task: str, method: str) -> AdaptiveModel:
        return load_on_device(self.catalog[task].checkpoints[method])

    def get(self, task: str, method: str, precision: str = FP32) -> AdaptiveModel:
        served = self.task(task)
        if method not in served.checkpoints:
            raise UserError(f"this demo holds no {method_title(method)} checkpoint for {served.spec.name}")
        if check_precision(precision, CHOICES) == FASTEST:  # the checkpoint's own choice, from its fp32 model
            precision = self.get(task, method).fastest_precision().precision
        key = (served.spec.name, method, precision)
        with self._lock:
            if key not in self._models:
                fp32_key = (*key[:2], FP32)
                if fp32_key not in self._models:
                    self._models[fp32_key] = warmed_up(self._load(*key[:2]))
                if precision != FP32:
                    self._models[key] = warmed_up(self._models[fp32_key].with_precision(precision))
            return self._models[key]


def warmed_up(model: AdaptiveModel) -> AdaptiveModel:
    """The model after one throw-away prediction, so the first real query's latency is not inflated by one-off setup
    costs.
    """
    model.predict("warm up", "warm up" if model.config.pair else None)
    return model


def knob_methods(models: ModelCache) -> list[str]:
    """The methods with an inference knob (a slider each in the demo), in ``METHODS`` order.

    Each method's model is asked, for the first of the served tasks the folder holds it for.
    """
    found = []
    for name in METHODS:
        task = next((task for task in models.tasks if name in models.methods_for(task)), None)
        if task is not None and models.get(task, name).method.knob is not None:
            found.append(name)
    return found


def knob_settings(models: ModelCache, task: str, method: str) -> dict:
    """A method's knob on a task as ``gr.Slider`` settings: range, step, default, label.

    Hidden where it has none for the task.
    """
    hidden = {"visible": False, "label": method_title(method)}
    if method not in models.methods_for(task):
        return hidden
    model = models.get(task, method)
    knob = model.method.knob
    if knob is None:
        return hidden
    low, high = (
        math.ceil(knob.low * 1e4) / 1e4,
        math.floor(knob.high * 1e4) / 1e4,
    )  # shown rounded, but never outside the range
    default = model.default_threshold()
    value = low if default is None else min(max(round(default, 4), low), high)
    return {
        "visible": True,
        "minimum": low,
        "maximum": high,
        "step": knob.step,
        "value": value,
        "label": f"{model.method.title}: {knob.name}",
        "info": knob.help,
    }


def clean_text(value: str | None, name: str) -> tuple[str, list[str]]:
    """The text as the model will read it, and notes for the user about what was changed or noticed."""
    text, notes = value or "", []
    controls = CONTROL_CHARACTERS.findall(text)
    if controls:
        text = CONTROL_CHARACTERS.sub(" ", text)
        notes.append(f"{name}: replaced {len(controls)} control character(s) with spaces.")
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS]
        notes.append(f"{name}: longer than {MAX_CHARS:,} characters, so only the first {MAX_CHARS:,} were kept.")
    if MARKUP.search(text):
        notes.append(
            f"{name}: contains markup (HTML tags or entities); it is read as plain text and shown escaped, "
            "never rendered."
        )
    return text, notes


@dataclass
class Comparison:
    """What every chosen method answered on one input."""

    task: str
    text: str  # as the models read it (cleaned)
    text_pair: str | None
    traces: list[Trace]  # the chosen methods', in the order they were chosen
    trained: dict[str, bool]  # per chosen method: whether its heads are trained
    baseline_latency_ms: (
        float | None
    )  # the baseline's latency on the same input at the same precision, for the measured speed-up
    notes: list[str]  # for the user: what was cleaned, truncated, untrained or run besides
    runs: int = 1  # each latency is the median of this many runs
    precision: str = FP32  # what was asked: every chosen method and the baseline ran at it, or each at its fastest
    fp32_baseline_latency_ms: float | None = (
        None  # at another precision: the fp32 baseline's latency too (what precision alone buys)
    )
    baseline_precision: str | None = None  # what the baseline ran in (None: the task has no baseline)

    def trace(self, method: str) -> Trace | None:
        return next((trace for trace in self.traces if trace.method == method), None)

    def settings(self) -> dict:
        """The run settings as the query log keeps them."""
        return {
            "thresholds": {trace.method: trace.threshold for trace in self.traces},
            "early_exit": True,
            "precision": self.precision,
        }


def public_checkpoint(source: str | None) -> str | None:
    """A checkpoint folder as visitors may see it.

    Relative to the project (``assets/checkpoints/mrpc/dpbert``), else its name only.
    """
    if source is None:
        return None
    folder = Path(source).resolve()
    return str(folder.relative_to(PROJECT)) if folder.is_relative_to(PROJECT) else folder.name


def compare_methods(
    models: ModelCache,
    task: str,
    text: str | None,
    text_pair: str | None,
    methods: list[str],
    knobs: Mapping[str, float | None],
    repeats: int = REPEATS,
    precision: str = FP32,
) -> Comparison:
    """Run every chosen method on the input, and the baseline for the speed-up.

    ``knobs`` holds each method's knob value; None: its default.

    Every method runs at ``precision`` (core/precision.py); the baseline runs at the same precision
    and, if that is not fp32, also at fp32, so a card can show what depth and precision each buy.
    A task whose folder holds no baseline checkpoint is compared without a measured speed-up.
    Each method runs ``repeats`` times, interleaved with the others (in alternating order), and
    reports the median latency. Raises ``UserError`` for input the models cannot take: no method,
    a method that cannot run the task, an empty or invisible text, a missing second sentence or
    one given to a single-sentence task, a knob out of range.
    """
    spec = models.spec(task)
    if not methods:
        raise UserError("choose at least one method to compare")
    runnable = models.methods_for(spec.name)
    unknown = [method for method in methods if method not in runnable]
    if unknown:
        raise UserError(
            f"{', '.join(map(method_title, unknown))} cannot run {spec.name}; choose from "
            f"{', '.join(map(method_title, runnable))}"
        )
    text, notes = clean_text(text, "text")
    if not text.strip():
        raise UserError("the text is empty: type a sentence")
    if not has_visible_text(text):
        raise UserError(
            "the text is empty: it holds only invisible characters (such as zero-width spaces); type a sentence"
        )
    pair = None
    if spec.pair:
        pair, pair_notes = clean_text(text_pair, "second sentence")
        notes += pair_notes
        if not has_visible_text(pair):
            raise UserError(f"{spec.name} compares two sentences: type the second sentence too")
    elif text_pair is not None and has_visible_text(text_pair):
        raise UserError(
            f"{spec.name} takes a single sentence, but a second sentence was given: leave the second sentence empty"
        )
    check_precision(precision, CHOICES)
    timed = BASELINE in runnable  # the speed-up is measured against the task's full model, where the folder has one
    order = methods if BASELINE in methods or not timed else [BASELINE, *methods]
    loaded = {method: models.get(spec.name, method, precision) for method in order}
    fp32_reference = f"{BASELINE} ({FP32})"  # a run key, not a method name
    baseline_precision = loaded[BASELINE].precision if timed else None
    if timed and baseline_precision != FP32:
        order, loaded = [*order, fp32_reference], loaded | {fp32_reference: models.get(spec.name, BASELINE)}
    tokenizer = loaded[order[0]].tokenizer
    notes += reading_notes(tokenizer, text, "text") + (
        [] if pair is None else reading_notes(tokenizer, pair, "second sentence")
    )
    runs: dict[str, list[Trace]] = {method: [] for method in order}
    for repeat in range(max(1, repeats)):
        for method in order if repeat % 2 == 0 else order[::-1]:  # alternate the order, so no method always runs first
            runs[method].append(loaded[method].predict(text, pair, threshold=knobs.get(method), layer_values=True)[0])
    median = {method: statistics.median(trace.latency_ms for trace in traces) for method, traces in runs.items()}
    traces = [
        replace(runs[method][0], latency_ms=median[method], checkpoint=public_checkpoint(runs[method][0].checkpoint))
        for method in methods
    ]
    trained = {method: loaded[method].config.trained for method in methods}
    token_limits = {
        loaded[trace.method].max_length for trace in runs.get(BASELINE, [])[:1] + traces if trace.truncated
    }
    if token_limits:
        notes.append(
            f"The input is longer than the model's limit of {min(token_limits)} tokens: only the first part "
            "was read (truncated)."
        )
    for trace in traces:
        if isinstance(trace.prediction, float) and shown_score(trace)[1]:
            notes.append(
                f"{method_title(trace.method)} answered {trace.prediction:.2f}, outside {spec.name}'s "
                f"{spec.scale_text(meaning=False)}; "
                f"it is shown clipped to {shown_score(trace)[0]:.2f}."
            )
    untrained = [method_title(method) for method, is_trained in trained.items() if not is_trained]
    if untrained:
        notes.append(
            f"Untrained heads for {spec.name}: {', '.join(untrained)}. Their checkpoints hold no trained "
            "heads, so these predictions are arbitrary."
        )
    if not timed:
        notes.append(
            f"There is no {method_title(BASELINE).lower()} checkpoint for {spec.name}, so no speed-up is "
            "measured (only the bound its layers set)."
        )
    elif BASELINE not in methods:
        notes.append(f"The {method_title(BASELINE).lower()} was also run (not shown) to measure the speed-up.")
    if precision == FASTEST:
        choices = [
            f"{method_title(method)} {models.get(spec.name, method).fastest_precision().describe()}"
            for method in dict.fromkeys([*methods, *([BASELINE] if timed else [])])
        ]
        notes.append(
            "Each checkpoint ran in its fastest precision that keeps its metric on the validation split: "
            + "; ".join(choices)
            + "."
        )
    if timed and baseline_precision != FP32:
        ran, added = (
            ("Each checkpoint ran in its own precision", "each precision")
            if precision == FASTEST
            else (f"Every method ran in {precision}", precision)
        )
        notes.append(
            f"{ran}; the {method_title(BASELINE).lower()} also ran in {FP32} (not shown) to measure what {added} adds."
        )
    return Comparison(
        spec.name,
        text,
        pair,
        traces,
        trained,
        median.get(BASELINE),
        notes,
        runs=max(1, repeats),
        precision=precision,
        fp32_baseline_latency_ms=median.get(fp32_reference),
        baseline_precision=baseline_precision,
    )
