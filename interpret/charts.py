"""Every Altair chart of the project: what a method did on one input, layer usage over many, and the trade-off figures.

The per-input and usage charts read only traces (and layer-usage tables from ``interpret.usage``),
so the demo, the report and a notebook draw the same pictures; their data is strict JSON: a
missing or non-finite number becomes null (a browser's JSON parser refuses ``NaN``, and the
chart would stay empty). The trade-off charts (``metric_lines``, ``speedup_chart``) draw the
tables the evaluation, trade-off and benchmark commands write beside them.
"""

from __future__ import annotations

import math

import altair as alt
import pandas as pd

from core.methods import BASELINE, METHODS
from core.tasks import TaskSpec, checkpoint_task
from core.trace import Trace

STATUS_COLOURS = {"executed": "#2563eb", "skipped (bypassed)": "#f59e0b", "not reached (exited)": "#e5e7eb"}
WIDTH = 460


def method_title(method: str) -> str:
    return METHODS[method].title if method in METHODS else method


def trace_task(trace: Trace) -> TaskSpec:
    """The task a trace answered, as its checkpoint would name it: the GLUE task of that name, else one of its own.

    A task of one's own has the labels its probabilities carry (none: a score) and no scale to clip to.
    """
    return checkpoint_task(trace.task, list(trace.probabilities) or None, trace.text_pair is not None)


def shown_score(trace: Trace) -> tuple[float, bool]:
    """A regression answer as shown, and whether it had to be clipped.

    It is clipped to the task's scale, where the task has one.
    """
    shown = trace_task(trace).clip_score(trace.prediction)
    return shown, shown != trace.prediction


def answer_text(trace: Trace) -> str:
    """The answer in a few characters.

    The label, or the score (on the task's scale where it has one, clipped to it).
    """
    if not isinstance(trace.prediction, float):
        return str(trace.prediction)
    shown, clipped = shown_score(trace)
    scale = trace_task(trace).score_range
    return f"{shown:.2f}" + (f" of {scale[1]:g}" if scale else "") + (" (clipped)" if clipped else "")


def _finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def chart_data(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every missing or non-finite number as None.

    The chart's JSON then has null, never NaN or Infinity.
    """
    return frame.astype(object).map(_finite_or_none)


def _layer_status(trace: Trace, layer: int) -> str:
    if layer in trace.layers_executed:
        return "executed"
    if layer in trace.layers_skipped:
        return "skipped (bypassed)"
    return "not reached (exited)"


def _layer_axis(num_layers: int) -> alt.X:
    return alt.X("layer:O", title="layer", sort=list(range(1, num_layers + 1)), axis=alt.Axis(labelAngle=0))


def layer_path_chart(traces: list[Trace]) -> alt.Chart:
    """Methods as rows, layers as columns; each cell executed / skipped / not reached, the exit marked."""
    cells = pd.DataFrame(
        [
            {"method": method_title(trace.method), "layer": layer, "status": _layer_status(trace, layer)}
            for trace in traces
            for layer in range(1, trace.num_layers + 1)
        ]
    )
    exits = pd.DataFrame(
        [
            {"method": method_title(trace.method), "layer": trace.exit_layer, "mark": "exit ▶"}
            for trace in traces
            if trace.exit_layer is not None
        ],
        columns=["method", "layer", "mark"],
    )
    num_layers = max(trace.num_layers for trace in traces)
    order = [method_title(trace.method) for trace in traces]
    y = alt.Y("method:N", title=None, sort=order)
    colour = alt.Color(
        "status:N",
        title="layer",
        scale=alt.Scale(domain=list(STATUS_COLOURS), range=list(STATUS_COLOURS.values())),
        legend=alt.Legend(orient="bottom"),
    )
    grid = (
        alt.Chart(chart_data(cells))
        .mark_rect(stroke="white", strokeWidth=2)
        .encode(x=_layer_axis(num_layers), y=y, color=colour, tooltip=["method", "layer", "status"])
    )
    marks = (
        alt.Chart(chart_data(exits))
        .mark_text(fontWeight="bold", color="#111827")
        .encode(x=_layer_axis(num_layers), y=y, text="mark:N")
    )
    return (grid + marks).properties(width=WIDTH, height=36 * len(traces), title="Which layers ran")


def _threshold_rule(value: float, label: str) -> alt.LayerChart:
    frame = pd.DataFrame([{"value": value, "label": f"{label} = {value:.3g}"}])
    rule = alt.Chart(chart_data(frame)).mark_rule(color="#dc2626", strokeDash=[6, 4]).encode(y="value:Q")
    text = (
        alt.Chart(chart_data(frame))
        .mark_text(align="left", dx=4, dy=-6, color="#dc2626")
        .encode(y="value:Q", text="label:N", x=alt.value(0))
    )
    return rule + text


def _exit_rule(layer: int | None, label: str) -> alt.Chart | None:
    if layer is None:
        return None
    frame = pd.DataFrame([{"layer": layer, "label": label}])
    return alt.Chart(frame).mark_rule(color="#111827", strokeWidth=2).encode(x="layer:O") + alt.Chart(frame).mark_text(
        align="left", dx=4, y=8, color="#111827"
    ).encode(x="layer:O", text="label:N")


def _combine(charts: list[alt.Chart | None], title: str) -> alt.LayerChart:
    return alt.layer(*[chart for chart in charts if chart is not None]).properties(
        width=WIDTH, height=220, title=title
    )


def method_chart(trace: Trace) -> alt.LayerChart | None:
    """The method's own per-layer chart (its ``LayerChart``), drawn from the trace; None if it declares none.

    Lines, or bars coloured by whether the layer ran; the run's knob value as a dashed rule where
    the method asks for one; the exit layer marked.
    """
    spec = METHODS[trace.method].layer_chart if trace.method in METHODS else None
    if spec is None:
        return None
    rows = [
        {
            "layer": step.layer,
            "series": series.label,
            "value": step.values.get(series.field),
            "status": _layer_status(trace, step.layer),
            "prediction": str(step.prediction),
        }
        for step in trace.per_layer
        if step.reached
        for series in spec.series
    ]
    frame = chart_data(pd.DataFrame(rows, columns=["layer", "series", "value", "status", "prediction"]))
    scale = alt.Scale(domain=list(spec.y_domain), clamp=True) if spec.y_domain else alt.Undefined
    y = alt.Y("value:Q", title=spec.y_title, scale=scale)
    tooltip = ["layer", "series", alt.Tooltip("value:Q", format=".4f"), "status", "prediction"]
    if spec.mark == "bar":
        colour = alt.Color(
            "status:N",
            title="layer",
            scale=alt.Scale(domain=list(STATUS_COLOURS), range=list(STATUS_COLOURS.values())),
            legend=alt.Legend(orient="bottom"),
        )
        marks = alt.Chart(frame).mark_bar().encode(x=_layer_axis(trace.num_layers), y=y, color=colour, tooltip=tooltip)
    else:
        labels = [series.label for series in spec.series]
        colour = alt.Color(
            "series:N",
            sort=labels,
            scale=alt.Scale(domain=labels, range=[series.colour for series in spec.series]),
            legend=alt.Legend(orient="bottom", columns=2, title=None) if len(labels) > 1 else None,
        )
        dash = alt.StrokeDash(
            "series:N",
            sort=labels,
            scale=alt.Scale(domain=labels, range=[[5, 3] if series.dashed else [1, 0] for series in spec.series]),
            legend=None,
        )
        marks = (
            alt.Chart(frame)
            .mark_line(point=True, clip=True)
            .encode(x=_layer_axis(trace.num_layers), y=y, color=colour, strokeDash=dash, tooltip=tooltip)
        )
    rules = (
        [_threshold_rule(trace.threshold, spec.knob_rule)]
        if spec.knob_rule and trace.threshold is not None and trace.early_exit
        else []
    )
    exit_label = f"exit after layer {trace.exit_layer}" if trace.exit_layer else None
    return _combine([marks, *rules, _exit_rule(trace.exit_layer, exit_label)], f"{spec.title} ({answer_text(trace)})")


def layer_frequency_chart(usage: pd.DataFrame, title: str) -> alt.VConcatChart | alt.Chart:
    """Per method, the share of inputs that executed each layer.

    Below it, where inputs exited (early-exit methods only).
    """
    usage = usage.assign(
        method=usage["method"].map(method_title),
        executed=pd.to_numeric(usage["executed"]),
        exited=pd.to_numeric(usage["exited"]),
    )
    num_layers = int(usage["layer"].max())
    executed = _layer_share_bars(
        usage, "executed", "share of inputs that ran the layer", num_layers, 200, title, domain=[0, 1]
    )
    exits = usage.dropna(subset=["exited"])
    if exits.empty:
        return executed
    exited = _layer_share_bars(
        exits, "exited", "share of inputs that exited here", num_layers, 140, "Where inputs exited early"
    )
    return alt.vconcat(executed, exited)


def _layer_share_bars(
    usage: pd.DataFrame,
    share: str,
    y_title: str,
    num_layers: int,
    height: int,
    title: str,
    domain: list[float] | None = None,
) -> alt.Chart:
    """Bars of one share column of ``usage`` per layer, the methods side by side (one panel of the usage chart)."""
    scale = alt.Undefined if domain is None else alt.Scale(domain=domain)
    return (
        alt.Chart(chart_data(usage))
        .mark_bar()
        .encode(
            x=_layer_axis(num_layers),
            xOffset="method:N",
            y=alt.Y(f"{share}:Q", title=y_title, scale=scale, axis=alt.Axis(format="%")),
            color=alt.Color("method:N", title="method", legend=alt.Legend(orient="bottom")),
            tooltip=["method", "layer", alt.Tooltip(f"{share}:Q", format=".1%"), "inputs"],
        )
        .properties(width=WIDTH, height=height, title=title)
    )


def stacked(charts: list[alt.TopLevelMixin]) -> alt.TopLevelMixin:
    """Several charts one above the other (one per task), or the single chart itself."""
    return charts[0] if len(charts) == 1 else alt.vconcat(*charts)


def metric_lines(
    frame: pd.DataFrame,
    x: str,
    y: str,
    title: str,
    series: str | None = None,
    series_title: str | None = None,
    axis_titles: tuple[str, str] | None = None,
) -> alt.Chart:
    """``y`` against ``x`` as lines with points, one line per value of the ``series`` column (one blue line without).

    Every column in the tooltip.
    """
    x_title, y_title = axis_titles or (x, y)
    colour = alt.Color(f"{series}:N", title=series_title) if series else alt.value("#2563eb")
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X(f"{x}:Q", title=x_title, scale=alt.Scale(zero=False)),
            y=alt.Y(f"{y}:Q", title=y_title, scale=alt.Scale(zero=False)),
            color=colour,
            tooltip=list(frame.columns),
        )
        .properties(title=title, width=480, height=300)
    )


def speedup_chart(
    points: pd.DataFrame, speed: str, speed_title: str, tooltip: list[str], keep_rules: pd.DataFrame | None, title: str
) -> alt.LayerChart:
    """Metric against measured speed-up (log scale) for benchmark rows.

    One line per method and precision (the ``series`` column) with the shipped points as diamonds;
    the full model's rows as squares labelled by their ``reference`` column; ``keep_rules`` (columns
    ``metric`` and ``label``) as dashed horizontal rules.
    """
    x = alt.X(f"{speed}:Q", title=speed_title, scale=alt.Scale(type="log"))
    y = alt.Y("metric:Q", title=str(points["metric_name"].iloc[0]), scale=alt.Scale(zero=False))
    base = alt.Chart(points[points["method"] != BASELINE]).encode(
        x=x,
        y=y,
        color=alt.Color("method:N", sort=list(METHODS)),
        strokeDash=alt.StrokeDash("precision:N", title="precision"),
        detail="series:N",
        tooltip=tooltip,
    )
    layers = [
        base.mark_line(point=True).encode(order="threshold:Q"),
        base.transform_filter(alt.datum.operating_point == "shipped").mark_point(
            size=160, filled=True, shape="diamond"
        ),
    ]
    reference = alt.Chart(points[points["method"] == BASELINE]).encode(x=x, y=y, tooltip=tooltip)
    layers += [
        reference.mark_point(size=120, filled=True, color="black", shape="square"),
        reference.mark_text(align="left", dx=7, dy=-7, fontSize=10).encode(text="reference:N"),
    ]
    if keep_rules is not None:
        layers.append(
            alt.Chart(keep_rules).mark_rule(strokeDash=[4, 4], color="gray").encode(y="metric:Q", tooltip=["label"])
        )
    return alt.layer(*layers).properties(title=title, width=560, height=340)


def probe_chart(probes: pd.DataFrame, task: str) -> alt.Chart:
    """What each layer knows (``training.probe``).

    A linear probe's dev metric per layer, [CLS] against mean pooling, per model.
    """
    data = chart_data(probes.assign(layer=probes["layer"].astype(int)))
    lines = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:O", title="after layer (0: embeddings)"),
            y=alt.Y("metric:Q", title=f"probe's dev {data['metric_name'].iloc[0]}", scale=alt.Scale(zero=False)),
            # legends below the plot: the model names are too long for the narrow column on the right of it
            color=alt.Color(
                "pooling:N",
                title="pooled state",
                scale=alt.Scale(domain=["cls", "mean"], range=["#ea580c", "#2563eb"]),
                legend=alt.Legend(orient="bottom"),
            ),
            strokeDash=alt.StrokeDash("model:N", legend=None),
            # the legend shows a marker per model (dashes draw none)
            shape=alt.Shape("model:N", title="model", legend=alt.Legend(orient="bottom", columns=1, labelLimit=0)),
            tooltip=["model", "pooling", "layer", alt.Tooltip("metric:Q", format=".3f")],
        )
    )
    layers = [lines]
    if data["majority_share"].notna().any():
        majority = float(data["majority_share"].dropna().iloc[0])
        layers.append(
            alt.Chart(pd.DataFrame({"majority": [majority]}))
            .mark_rule(color="#9ca3af", strokeDash=[4, 4])
            .encode(y="majority:Q")
        )
    return alt.layer(*layers).properties(
        title=f"{task}: what each layer knows (linear probe; grey: the majority answer)", width=WIDTH, height=220
    )
