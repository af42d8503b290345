"""Token attributions for the answer a method actually gave, on the path it actually took.

The engine's decisions (which layers ran, where the input left) depend on the input, so
attributing through the engine would mix in paths the model never took. ``replay`` instead
fixes the trace's path and lets the method compute its answer along it with its own code: the
layers the input reached are visited in order, executed ones are run, and the method's
``plan``/``after_layer`` see every reached layer as in the engine (so DeeBERT's answer is its
exit layer's off-ramp, DACT's the accumulation over the layers run, DPBERT's the head after the
executed subset), with decisions switched off. Integrated gradients run along that fixed path.

Integrated gradients are taken with respect to the embedding layer's output, which is exactly
what Captum's ``LayerIntegratedGradients`` on the embeddings computes, but without installing a
hook on the shared model: predictions running at the same time in other threads stay untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from captum.attr import IntegratedGradients

from core.methods import RunSettings
from core.model import AdaptiveModel
from core.pooling import pool
from core.trace import Trace

DEFAULT_STEPS = 32
PAIR_SEPARATOR = "  ‖  "
FOLLOW_PATH = RunSettings(early_exit=False)  # the path is fixed by the trace, not decided again


@dataclass
class Attribution:
    """Per-token scores scaled to [-1, 1] (positive: pushes towards the answer), for ``gr.HighlightedText``."""

    tokens: list[tuple[str, float | None]]
    target: str  # the class (or "score") being explained
    convergence_delta: float  # how far the integral is from f(input) - f(baseline); small is good


def encode(model: AdaptiveModel, trace: Trace) -> dict[str, torch.Tensor]:
    """The trace's input, tokenised (and truncated) exactly as the engine did, on the model's device."""
    encoded = model.tokenize([trace.text], None if trace.text_pair is None else [trace.text_pair])
    return {name: value.to(model.device) for name, value in encoded.items()}


def replay(model: AdaptiveModel, trace: Trace, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The answer along the trace's path from the given embeddings: probabilities [b, C] or scores [b].

    ``embeddings`` may hold several rows (Captum's interpolation steps); the mask is shared.
    """
    encoder, method = model.encoder, model.method
    mask = attention_mask.expand(embeddings.shape[0], -1)
    layer_mask = encoder.attention_mask_for(embeddings, mask)
    hidden, state = embeddings, method.begin(embeddings.shape[0], embeddings.device)
    pooled = pool(hidden, mask, method.pooling)
    for step in trace.per_layer:
        if not step.reached:
            break
        index = step.layer - 1
        method.plan(index, pooled, hidden, mask, state, FOLLOW_PATH)
        if step.executed:
            hidden = encoder.run_layer(index, hidden, layer_mask)
            pooled = pool(hidden, mask, method.pooling)
        method.after_layer(index, pooled, state, FOLLOW_PATH)
    return method.answer(pooled, state)


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
    special = torch.tensor(
        [[token_id in model.tokenizer.all_special_ids for token_id in input_ids[0].tolist()]], device=input_ids.device
    )
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
            embeddings,
            baselines=baseline,
            target=target_index,
            n_steps=steps,
            internal_batch_size=steps,
            return_convergence_delta=True,
        )
    per_token = scores.sum(-1)[0]
    scale = float(per_token.abs().max()) or 1.0
    return Attribution(
        tokens=_display_tokens(model, input_ids[0].tolist(), (per_token / scale).tolist()),
        target=target,
        convergence_delta=float(delta.abs().max()),
    )
