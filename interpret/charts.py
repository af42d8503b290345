"""Altair charts of what a method did on one input, and of layer usage over many inputs.

They read only traces (and layer-usage tables from ``interpret.usage``), so the demo, the
report and a notebook draw the same pictures.
"""
from __future__ import annotations

import altair as alt
import pandas as pd

from core.trace import Trace

METHOD_TITLES = {"full": "Full model", "deebert": "DeeBERT", "dact": "DACT-BERT", "dpbert": "DPBERT"}
STATUS_COLOURS = {"executed": "#2563eb", "skipped (bypassed)": "#f59e0b", "not reached (exited)": "#e5e7eb"}
WIDTH = 460


def method_title(method: str) -> str:
    return METHOD_TITLES.get(method, method)


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
        [{"method": method_title(trace.method), "layer": trace.exit_layer, "mark": "exit ▶"} for trace in traces if trace.exit_layer is not None],
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
        alt.Chart(cells)
        .mark_rect(stroke="white", strokeWidth=2)
        .encode(x=_layer_axis(num_layers), y=y, color=colour, tooltip=["method", "layer", "status"])
    )
    marks = alt.Chart(exits).mark_text(fontWeight="bold", color="#111827").encode(x=_layer_axis(num_layers), y=y, text="mark:N")
    return (grid + marks).properties(width=WIDTH, height=36 * len(traces), title="Which layers ran")


def _threshold_rule(value: float, label: str) -> alt.LayerChart:
    frame = pd.DataFrame([{"value": value, "label": f"{label} = {value:.3g}"}])
    rule = alt.Chart(frame).mark_rule(color="#dc2626", strokeDash=[6, 4]).encode(y="value:Q")
    text = alt.Chart(frame).mark_text(align="left", dx=4, dy=-6, color="#dc2626").encode(y="value:Q", text="label:N", x=alt.value(0))
    return rule + text


def _exit_rule(layer: int | None, label: str) -> alt.Chart | None:
    if layer is None:
        return None
    frame = pd.DataFrame([{"layer": layer, "label": label}])
    return alt.Chart(frame).mark_rule(color="#111827", strokeWidth=2).encode(x="layer:O") + alt.Chart(frame).mark_text(
        align="left", dx=4, y=8, color="#111827"
    ).encode(x="layer:O", text="label:N")


def _combine(charts: list[alt.Chart | None], title: str) -> alt.LayerChart:
    return alt.layer(*[chart for chart in charts if chart is not None]).properties(width=WIDTH, height=220, title=title)


def entropy_chart(trace: Trace) -> alt.LayerChart:
    """DeeBERT: each off-ramp's entropy against the threshold S; the input exits at the first one below S."""
    steps = pd.DataFrame(
        [{"layer": step.layer, "entropy": step.entropy, "status": _layer_status(trace, step.layer), "prediction": step.prediction} for step in trace.per_layer if step.reached]
    )
    axis = _layer_axis(trace.num_layers)
    line = alt.Chart(steps).mark_line(point=alt.OverlayMarkDef(size=80, filled=True), color="#2563eb").encode(
        x=axis, y=alt.Y("entropy:Q", title="off-ramp entropy (nats)"), tooltip=["layer", alt.Tooltip("entropy:Q", format=".4f"), "prediction"]
    )
    exit_label = f"exit after layer {trace.exit_layer}" if trace.exit_layer else None
    rules = [_threshold_rule(trace.threshold, "S")] if trace.threshold is not None and trace.early_exit else []
    return _combine([line, *rules, _exit_rule(trace.exit_layer, exit_label)], f"DeeBERT: entropy per layer vs S ({trace.prediction})")


def halting_chart(trace: Trace) -> alt.LayerChart:
    """DACT-BERT: the top class's accumulated probability and its lower bound, the runner-up's and its upper bound.

    The model halts at the first layer where the lower bound reaches the upper bound. The upper
    bound can exceed 1 early on (it adds every probability still to come); the axis is clipped at 1.
    """
    rows = []
    for step in trace.per_layer:
        if not step.reached or step.accumulated is None:
            continue
        ranked = sorted(step.accumulated.items(), key=lambda item: item[1], reverse=True)
        (top, top_value), (runner_up, runner_up_value) = ranked[0], ranked[1]
        rows += [
            {"layer": step.layer, "series": "top class: accumulated", "value": top_value, "class": top},
            {"layer": step.layer, "series": "top class: lower bound", "value": step.top_lower_bound, "class": top},
            {"layer": step.layer, "series": "runner-up: accumulated", "value": runner_up_value, "class": runner_up},
            {"layer": step.layer, "series": "runner-up: upper bound", "value": step.runner_up_upper_bound, "class": runner_up},
        ]
    series = ["top class: accumulated", "top class: lower bound", "runner-up: accumulated", "runner-up: upper bound"]
    lines = alt.Chart(pd.DataFrame(rows)).mark_line(point=True, clip=True).encode(
        x=_layer_axis(trace.num_layers),
        y=alt.Y("value:Q", title="probability", scale=alt.Scale(domain=[0, 1], clamp=True)),
        color=alt.Color("series:N", sort=series, scale=alt.Scale(domain=series, range=["#2563eb", "#93c5fd", "#ea580c", "#fdba74"]), legend=alt.Legend(orient="bottom", columns=2, title=None)),
        strokeDash=alt.StrokeDash("series:N", sort=series, scale=alt.Scale(domain=series, range=[[1, 0], [5, 3], [1, 0], [5, 3]]), legend=None),
        tooltip=["layer", "series", "class", alt.Tooltip("value:Q", format=".4f")],
    )
    label = f"halt after layer {trace.exit_layer}" if trace.exit_layer else None
    title = f"DACT-BERT: halting bounds ({trace.prediction}" + ("" if trace.exit_layer else ", no early halt") + ")"
    return _combine([lines, _exit_rule(trace.exit_layer, label)], title)


def planner_chart(trace: Trace) -> alt.LayerChart:
    """DPBERT: the planner's probability of executing each layer against the threshold; below it the layer is bypassed."""
    steps = pd.DataFrame(
        [{"layer": step.layer, "planner probability": step.planner_prob, "status": _layer_status(trace, step.layer)} for step in trace.per_layer if step.reached]
    )
    bars = alt.Chart(steps).mark_bar().encode(
        x=_layer_axis(trace.num_layers),
        y=alt.Y("planner probability:Q", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("status:N", title="layer", scale=alt.Scale(domain=list(STATUS_COLOURS), range=list(STATUS_COLOURS.values())), legend=alt.Legend(orient="bottom")),
        tooltip=["layer", alt.Tooltip("planner probability:Q", format=".4f"), "status"],
    )
    rules = [_threshold_rule(trace.threshold, "threshold")] if trace.threshold is not None and trace.early_exit else []
    return _combine([bars, *rules], f"DPBERT: planner probability per layer ({len(trace.layers_skipped)} bypassed)")


def layer_frequency_chart(usage: pd.DataFrame, title: str) -> alt.VConcatChart | alt.Chart:
    """Per method, the share of inputs that executed each layer; below it, where inputs exited (early-exit methods only)."""
    usage = usage.assign(method=usage["method"].map(method_title))
    num_layers = int(usage["layer"].max())
    colour = alt.Color("method:N", title="method", legend=alt.Legend(orient="bottom"))
    executed = alt.Chart(usage).mark_bar().encode(
        x=_layer_axis(num_layers),
        xOffset="method:N",
        y=alt.Y("executed:Q", title="share of inputs that ran the layer", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        color=colour,
        tooltip=["method", "layer", alt.Tooltip("executed:Q", format=".1%"), "inputs"],
    ).properties(width=WIDTH, height=200, title=title)
    exits = usage.dropna(subset=["exited"])
    if exits.empty:
        return executed
    exited = alt.Chart(exits).mark_bar().encode(
        x=_layer_axis(num_layers),
        xOffset="method:N",
        y=alt.Y("exited:Q", title="share of inputs that exited here", axis=alt.Axis(format="%")),
        color=colour,
        tooltip=["method", "layer", alt.Tooltip("exited:Q", format=".1%"), "inputs"],
    ).properties(width=WIDTH, height=140, title="Where inputs exited early")
    return alt.vconcat(executed, exited)


def stacked(charts: list[alt.TopLevelMixin]) -> alt.TopLevelMixin:
    """Several charts one above the other (one per task), or the single chart itself."""
    return charts[0] if len(charts) == 1 else alt.vconcat(*charts)
