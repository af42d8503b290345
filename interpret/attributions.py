"""Token attributions for the answer a method actually gave, on the path it actually took.

The engine's decisions (which layers ran, where the input left) depend on the input, so
attributing through the engine would mix in paths the model never took. ``replay`` instead
fixes the trace's path: the executed layers only (DPBERT), up to the exit (DeeBERT, DACT), and
the head that answered (the exit layer's off-ramp for DeeBERT, the accumulation over the layers
run for DACT, the final head otherwise). Integrated gradients run along that fixed path.

Integrated gradients are taken with respect to the embedding layer's output, which is exactly
what Captum's ``LayerIntegratedGradients`` on the embeddings computes, but without installing a
hook on the shared model: predictions running at the same time in other threads stay untouched.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from captum.attr import IntegratedGradients

from core.heads import head_output
from core.methods.dact import accumulate
from core.model import AdaptiveModel
from core.trace import Trace

DEFAULT_STEPS = 32
PAIR_SEPARATOR = "  ‖  "


@dataclass
class Attribution:
    """Per-token scores scaled to [-1, 1] (positive: pushes towards the answer), for ``gr.HighlightedText``."""

    tokens: list[tuple[str, float | None]]
    target: str  # the class (or "score") being explained
    convergence_delta: float  # how far the integral is from f(input) - f(baseline); small is good


def _path(trace: Trace) -> list[int]:
    """0-based indices of the layers the trace ran, in order."""
    return [layer - 1 for layer in trace.layers_executed]


def _final_head_answer(model: AdaptiveModel, trace: Trace, cls_states: list[torch.Tensor]) -> torch.Tensor:
    return head_output(model.method.head(cls_states[-1]))


def _off_ramp_answer(model: AdaptiveModel, trace: Trace, cls_states: list[torch.Tensor]) -> torch.Tensor:
    answering_layer = trace.exit_layer or trace.num_layers
    return head_output(model.method.ramps[answering_layer - 1](cls_states[-1]))


def _accumulated_answer(model: AdaptiveModel, trace: Trace, cls_states: list[torch.Tensor]) -> torch.Tensor:
    method = model.method
    rows = cls_states[0].shape[0]
    answer = cls_states[0].new_zeros(rows, method.num_outputs)
    remaining = cls_states[0].new_ones(rows)
    for layer, cls in zip(_path(trace), cls_states):
        probs = method.classifiers[layer](cls).softmax(-1)
        answer, remaining = accumulate(answer, remaining, probs, method.halting_probability(layer, cls))
    return answer


ANSWERS: dict[str, Callable[[AdaptiveModel, Trace, list[torch.Tensor]], torch.Tensor]] = {
    "full": _final_head_answer,
    "dpbert": _final_head_answer,
    "deebert": _off_ramp_answer,
    "dact": _accumulated_answer,
}


def encode(model: AdaptiveModel, trace: Trace) -> dict[str, torch.Tensor]:
    """The trace's input, tokenised (and truncated) exactly as the engine did."""
    return model.tokenize([trace.text], None if trace.text_pair is None else [trace.text_pair])


def replay(model: AdaptiveModel, trace: Trace, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The answer along the trace's path from the given embeddings: probabilities [b, C] or scores [b].

    ``embeddings`` may hold several rows (Captum's interpolation steps); the mask is shared.
    """
    if trace.method not in ANSWERS:
        raise ValueError(f"no replay for method {trace.method!r}")
    mask = attention_mask.expand(embeddings.shape[0], -1)
    layer_mask = model.encoder.attention_mask_for(embeddings, mask)
    hidden, cls_states = embeddings, []
    for layer in _path(trace):
        hidden = model.encoder.run_layer(layer, hidden, layer_mask)
        cls_states.append(hidden[:, 0])
    if not cls_states:  # every layer bypassed: the head reads the embeddings' [CLS]
        cls_states.append(hidden[:, 0])
    return ANSWERS[trace.method](model, trace, cls_states)


def _display_tokens(model: AdaptiveModel, input_ids: list[int], scores: list[float]) -> list[tuple[str, float | None]]:
    """Word pieces glued back into words, special tokens dropped, a separator between the two sentences."""
    tokenizer = model.tokenizer
    special = set(tokenizer.all_special_ids)
    tokens = tokenizer.convert_ids_to_tokens(input_ids)
    shown: list[tuple[str, float | None]] = []
    seen_text = False
    last = len(input_ids) - 1
    for position, (token_id, token, score) in enumerate(zip(input_ids, tokens, scores)):
        if token_id == tokenizer.sep_token_id and seen_text and position < last:
            shown.append((PAIR_SEPARATOR, None))
        elif token_id not in special:
            text = token[2:] if token.startswith("##") else (" " if seen_text else "") + token
            shown.append((text, round(score, 4)))
            seen_text = True
    return shown


def attribute(model: AdaptiveModel, trace: Trace, steps: int = DEFAULT_STEPS) -> Attribution:
    """Integrated gradients of the trace's answer with respect to the token embeddings, along the trace's path.

    The baseline keeps [CLS]/[SEP] and replaces every other token by [PAD].
    """
    encoded = encode(model, trace)
    input_ids = encoded["input_ids"]
    token_type_ids = encoded.get("token_type_ids")
    special = torch.tensor([[token_id in model.tokenizer.all_special_ids for token_id in input_ids[0].tolist()]])
    baseline_ids = torch.where(special, input_ids, torch.full_like(input_ids, model.tokenizer.pad_token_id))
    with torch.no_grad():
        embeddings = model.encoder.embed(input_ids, token_type_ids)
        baseline = model.encoder.embed(baseline_ids, token_type_ids)
    if model.config.labels is None:
        target_index, target = None, "score"
    else:
        target_index, target = model.config.labels.index(trace.prediction), str(trace.prediction)
    integrated = IntegratedGradients(lambda rows: replay(model, trace, rows, encoded["attention_mask"]))
    with torch.enable_grad():
        scores, delta = integrated.attribute(
            embeddings, baselines=baseline, target=target_index, n_steps=steps, internal_batch_size=steps, return_convergence_delta=True
        )
    per_token = scores.sum(-1)[0]
    scale = float(per_token.abs().max()) or 1.0
    return Attribution(
        tokens=_display_tokens(model, input_ids[0].tolist(), (per_token / scale).tolist()),
        target=target,
        convergence_delta=float(delta.abs().max()),
    )
