"""HTML for the demo: result cards and messages, built from traces with everything user-typed escaped."""

from __future__ import annotations

import html

from core.methods import METHODS
from core.precision import FP32
from core.trace import Trace
from interpret.attributions import Attribution
from interpret.charts import method_title, shown_score, trace_task

CARD_STYLE = "flex:1;min-width:12rem;border:1px solid #e5e7eb;border-radius:8px;padding:.6rem"


def intro_markdown() -> str:
    """The demo's heading and one line per method, from the methods' own titles and summaries."""
    lines = [f"- **{method.title}**: {method.summary}" for method in METHODS.values()]
    return (
        "# Adaptive-depth BERT\nType a sentence (or a pair), pick the methods, and see which transformer "
        "layers each one spends on it.\n\n" + "\n".join(lines)
    )


def message_html(errors: list[str], notes: list[str]) -> str:
    """Errors and notes as escaped HTML (they may quote the user's text)."""
    parts = [f'<p class="demo-error" style="color:#b91c1c"><b>Error:</b> {html.escape(text)}</p>' for text in errors]
    parts += [f'<p class="demo-note" style="color:#92400e">{html.escape(text)}</p>' for text in notes]
    return "\n".join(parts)


def layers_text(layers: list[int]) -> str:
    return ", ".join(map(str, layers)) if layers else "none"


def precision_speedup_text(trace: Trace, fp32_baseline_latency_ms: float | None) -> str:
    """At a precision other than fp32.

    The measured speed-up against the full model in fp32 (depth and precision together).
    """
    if not fp32_baseline_latency_ms or trace.latency_ms <= 0:
        return ""
    return (
        f'<div class="speed-up-fp32">speed-up vs full in fp32: {fp32_baseline_latency_ms / trace.latency_ms:.2f}× '
        "measured</div>"
    )


def speedup_text(trace: Trace, baseline_latency_ms: float | None) -> str:
    """Measured speed-up against the full model next to the bound its layer count sets, saying why when the measurement
    exceeds it.
    """
    bound = f"{trace.expected_speedup:.2f}× in layers"
    if not baseline_latency_ms or trace.latency_ms <= 0:
        return f"n/a measured, {bound}"
    measured = baseline_latency_ms / trace.latency_ms
    text = f"{measured:.2f}× measured, {bound}"
    if round(measured, 2) > round(trace.expected_speedup, 2):  # as shown: 1.004x is not above a 1.00x bound
        text += (
            f' <span class="above-bound" style="color:#92400e">(above the {trace.expected_speedup:.2f}× its '
            "layer count allows: "
            "the difference is timing noise on one short input, not real speed)</span>"
        )
    return text


def answer_html(trace: Trace) -> tuple[str, str]:
    """The answer and what goes under it.

    Class probabilities, or the score's scale where the task has one (and a flag when it was clipped to it).
    """
    if trace.probabilities:
        odds = "".join(
            f"<div>{html.escape(label)}: {p:.3f} <span "
            f'style="display:inline-block;height:.6em;width:{p * 6:.2f}em;background:#2563eb"></span></div>'
            for label, p in trace.probabilities.items()
        )
        return html.escape(str(trace.prediction)), odds
    spec = trace_task(trace)
    shown, clipped = shown_score(trace)
    below = f'<div class="scale">on the {html.escape(spec.scale_text())}</div>' if spec.score_range else ""
    if clipped:
        below += (
            f'<div class="out-of-range" style="color:#b91c1c">the model answered {trace.prediction:.2f}, outside '
            "the scale: shown clipped</div>"
        )
    return f"score {shown:.2f}", below


def result_card(
    trace: Trace,
    trained: bool,
    baseline_latency_ms: float | None,
    runs: int = 1,
    fp32_baseline_latency_ms: float | None = None,
    baseline_precision: str | None = None,
) -> str:
    """One method's answer as an HTML card; everything shown comes from the trace.

    ``baseline_precision``: what the full model behind the speed-up ran in (default: the trace's precision).
    """
    answer, below = answer_html(trace)
    exit_text = f"after layer {trace.exit_layer}" if trace.exit_layer is not None else "none (ran to the end)"
    badge = "" if trained else ' <span style="color:#b91c1c">(untrained)</span>'
    latency = f"{trace.latency_ms:.1f} ms" + (
        f" (median of {runs} runs)" if runs > 1 else " (one run: a noisy sample)"
    )
    baseline_precision = baseline_precision or trace.precision
    speedup_label = "speed-up vs full" + (
        "" if baseline_precision == FP32 else f" in {html.escape(baseline_precision)}"
    )
    precision = "" if trace.precision == FP32 else f"<div>precision: {html.escape(trace.precision)}</div>\n"
    return f"""<div class="result-card" data-method="{html.escape(trace.method)}" style="{CARD_STYLE}">
<h4 style="margin:0 0 .3rem 0">{html.escape(method_title(trace.method))}{badge}</h4>
<div class="prediction" style="font-size:1.3em;font-weight:bold">{answer}</div>{below}
<div>layers executed: {layers_text(trace.layers_executed)} ({len(trace.layers_executed)} of {trace.num_layers})</div>
<div>skipped: {layers_text(trace.layers_skipped)}</div>
<div>exit: {exit_text}</div>
<div>latency: {latency}</div>
{precision}<div class="speed-up">{speedup_label}: {speedup_text(trace, baseline_latency_ms)}</div>
{precision_speedup_text(trace, fp32_baseline_latency_ms)}</div>"""


def results_html(
    traces: list[Trace],
    trained: dict[str, bool],
    baseline_latency_ms: float | None,
    runs: int = 1,
    fp32_baseline_latency_ms: float | None = None,
    baseline_precision: str | None = None,
) -> str:
    """The input as read, then one card per method."""
    first = traces[0]
    asked = html.escape(first.text) + ("" if first.text_pair is None else " ‖ " + html.escape(first.text_pair))
    cards = "".join(
        result_card(
            trace, trained[trace.method], baseline_latency_ms, runs, fp32_baseline_latency_ms, baseline_precision
        )
        for trace in traces
    )
    return (
        f'<div class="results"><p class="asked"><b>Input:</b> {asked}</p><div '
        f'style="display:flex;gap:.6rem;flex-wrap:wrap">{cards}</div></div>'
    )


def attribution_caption(trace: Trace, result: Attribution) -> str:
    """What an attribution shows, in one sentence (plain text: pass it through ``message_html``)."""
    return (
        f"Integrated gradients for {method_title(trace.method)}'s answer {result.target!r} on the layers it ran "
        f"({layers_text(trace.layers_executed)}); positive scores push towards it, negative ones away. "
        f"Convergence error {result.convergence_delta:.2g}."
        + (
            ""
            if trace.precision == FP32
            else f" Computed on the fp32 model along the {trace.precision} run's path (gradients need fp32 weights)."
        )
    )
