"""A model's whole batch-1 computation as one ONNX graph, its decisions inside it: one ONNX Runtime call per input.

The per-layer sessions of ``core/onnx_layers.py`` keep the engine's loop in PyTorch, so every
layer costs a session call plus the tensor work of the decisions between calls. At batch size 1
there are no rows to select or padding to trim, so the whole loop can live in the graph instead:

- before each layer, the method's ``plan``; if it returns a run mask, the layer sits in
  ``torch.cond(run[0], run_layer, keep)``;
- after each layer, the pooled state and ``after_layer``; if it returns a stop mask (and the
  layer is not the last), ``torch.cond(stop[0], answer_now, rest_of_the_network)`` with the rest
  of the network nested in the false branch, so no layer after an exit is computed at run time.

``torch.onnx.export`` (the dynamo exporter) turns each ``torch.cond`` into an ONNX ``If`` whose
branches are subgraphs; int8 quantizes the MatMuls inside every subgraph too. The method's
``state`` dict is threaded through the branches as a fixed-order tuple of tensors (with the
hidden states, pooled state, padding mask, knob and executed layers), so any method whose
decisions are tensor operations on its state exports without knowing its name.

The graph takes ``input_ids``, ``attention_mask``, ``token_type_ids`` and ``threshold`` and
returns the answer (probabilities [1, C] or a score [1]), the 1-based exit layer [1] (0: none) and
the executed layers [L] (1: computed). The knob is a graph input where the method's decisions
compare tensors with it, so a new value needs no export; a method that turns the knob into a
Python number first (a branch or ``math`` call on its value) cannot trace it, and gets a graph
with the value baked in instead, one per value (``OneGraphRuntime`` caches them).

The exporter keeps every weight in the main graph, and a branch reads the weights of its layers
from there (outer scope). ONNX Runtime prepacks a MatMul's constant weight into its kernel's own
layout at load time only where the weight is an initializer of the graph the node stands in, so
every layer inside a branch repacked its weights on every call. ``sink_initializers`` moves each
weight into the branch that holds all its uses before the session loads the graph.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from core.backbone import Encoder
from core.engine import BatchResult, LayerRecord
from core.errors import UserError
from core.methods.base import Method, RunSettings, State
from core.onnx_layers import additive_padding, new_session, quantize_onnx, quiet_exporter
from core.pooling import pool

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "threshold")
OUTPUT_NAMES = ("answer", "exit_layer", "executed")
STATE = "state."  # prefix of the method's state entries among the tensors threaded through the branches
Carry = dict[str, torch.Tensor]  # every tensor a branch reads, by name


Outputs = tuple[torch.Tensor, ...]


def _branch(function: Callable[[Carry], Outputs], names: list[str]) -> Callable[..., Outputs]:
    """``function`` of a named carry as a ``torch.cond`` branch of positional operands in ``names`` order."""
    return lambda *values: function(dict(zip(names, values)))


def _cond(predicate: torch.Tensor, if_true: Callable, if_false: Callable, carry: Carry) -> Outputs:
    names = list(carry)
    # fresh row-major strides: a view's stride can hold the symbolic length where its size is 1; cond cannot trace it
    operands = tuple(value.clone(memory_format=torch.contiguous_format) for value in carry.values())
    return torch.cond(predicate, _branch(if_true, names), _branch(if_false, names), operands)


class OneGraphForward(nn.Module):
    """The engine's batch-1 loop as one traceable forward, every decision a ``torch.cond``."""

    def __init__(self, encoder: Encoder, method: Method, settings: RunSettings, threshold_is_input: bool):
        super().__init__()
        self.encoder, self.method = encoder, method
        self.early_exit, self.baked_threshold, self.threshold_is_input = (
            settings.early_exit,
            settings.threshold,
            threshold_is_input,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        threshold: torch.Tensor,
    ) -> Outputs:
        hidden = self.encoder.embed(input_ids, token_type_ids)
        carry = {
            "hidden": hidden,
            # one row: a [length] mask gives the branches the length as a size, never as a stride
            "tokens": attention_mask[0],
            "padding": additive_padding(attention_mask, hidden.dtype).reshape(-1),
            "threshold": threshold,
            "executed": torch.zeros(self.encoder.num_layers, dtype=torch.int64),
        }
        if self.method.decides_every_layer:
            carry["pooled"] = pool(hidden, attention_mask, self.method.pooling)
        state = self.method.begin(1, hidden.device)
        return self.from_layer(0, carry | {STATE + name: value for name, value in state.items()})

    def settings(self, carry: Carry) -> RunSettings:
        threshold = carry["threshold"] if self.threshold_is_input else self.baked_threshold
        return RunSettings(threshold=threshold, early_exit=self.early_exit)

    def from_layer(self, layer: int, carry: Carry) -> Outputs:
        """Layer ``layer`` and everything after it: (answer, exit layer, executed layers)."""
        method, last = self.method, layer == self.encoder.num_layers - 1
        state: State = {name[len(STATE) :]: value for name, value in carry.items() if name.startswith(STATE)}
        settings = self.settings(carry)
        mask = carry["tokens"].unsqueeze(0)
        run, _ = method.plan(layer, carry.get("pooled"), carry["hidden"], mask, state, settings)
        layer_inputs = {"hidden": carry["hidden"], "padding": carry["padding"]}
        if run is None:
            hidden, ran = self.run_layer(layer, layer_inputs)[0], torch.ones((), dtype=torch.int64)
        else:
            hidden = _cond(
                run[0],
                lambda inputs: self.run_layer(layer, inputs),
                lambda inputs: (inputs["hidden"].clone(),),
                layer_inputs,
            )[0]
            ran = run[0].to(torch.int64)
        executed = torch.where(torch.arange(self.encoder.num_layers) == layer, ran, carry["executed"])
        carry = carry | {"hidden": hidden, "executed": executed}
        if method.decides_every_layer or last:
            carry["pooled"] = pool(hidden, mask, method.pooling)
        stop, _ = method.after_layer(layer, carry.get("pooled"), state, settings)
        carry |= {STATE + name: value for name, value in state.items()}
        if last:
            return self.answer(carry, exit_layer=0)
        if stop is None:
            return self.from_layer(layer + 1, carry)
        return _cond(
            stop[0],
            lambda inner: self.answer(inner, exit_layer=layer + 1),
            lambda inner: self.from_layer(layer + 1, inner),
            carry,
        )

    def run_layer(self, layer: int, inputs: Carry) -> tuple[torch.Tensor]:
        return (self.encoder.run_layer(layer, inputs["hidden"], inputs["padding"][None, None, None, :]),)

    def answer(self, carry: Carry, exit_layer: int) -> Outputs:
        state = {name[len(STATE) :]: value for name, value in carry.items() if name.startswith(STATE)}
        answer = self.method.answer(carry["pooled"], state)
        return answer.clone(), torch.full((1,), exit_layer, dtype=torch.int64), carry["executed"].clone()


def sample_inputs(threshold: float | None) -> tuple[torch.Tensor, ...]:
    """A batch-1 input of seven tokens to trace with (the length is a dynamic dimension)."""
    ids = torch.tensor([[101, 2023, 2003, 1037, 7953, 102, 102]])
    knob = torch.tensor(0.0 if threshold is None else threshold, dtype=torch.float32)
    return ids, torch.ones_like(ids), torch.zeros_like(ids), knob


def trace(encoder: Encoder, method: Method, settings: RunSettings) -> tuple[torch.export.ExportedProgram, bool]:
    """The batch-1 loop as an exported program, and whether its knob is an input (else the knob value is baked in)."""
    length = torch.export.Dim("length", max=encoder.config.max_position_embeddings)
    shapes = {
        "input_ids": {1: length},
        "attention_mask": {1: length},
        "token_type_ids": {1: length},
        "threshold": None,
    }
    sample = sample_inputs(settings.threshold)

    def export(knob_is_input: bool) -> torch.export.ExportedProgram:
        forward = OneGraphForward(encoder, method, settings, knob_is_input)
        return torch.export.export(forward, sample, dynamic_shapes=shapes, strict=False)

    with torch.no_grad():
        try:
            try:
                return export(True), True
            except GuardOnDataDependentSymNode:  # the method's decisions branch in Python on the knob's value
                return export(False), False
        except Exception as error:  # the exporter's own errors: say what to run instead, in one line
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            instead = "use a batch size above 1 or --precision int8"
            problem = f"{method.title} cannot run as one ONNX graph at batch size 1 ({reason})"
            raise UserError(f"{problem}; {instead}") from error


def export_one_graph(encoder: Encoder, method: Method, settings: RunSettings, path: Path) -> bool:
    """Write the fp32 batch-1 graph of ``method`` to ``path`` (length dynamic); True: the knob is an input."""
    program, threshold_is_input = trace(encoder.eval(), method.eval(), settings)
    with quiet_exporter():
        torch.onnx.export(
            program,
            (),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamo=True,
            external_data=False,
        )
    return threshold_is_input


GraphPath = tuple[int, ...]  # where a subgraph stands: the index of each branch on the way down from the main graph


def branches(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The subgraphs held by ``graph``'s nodes (an ``If``'s then and else branches), in a fixed order."""
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield attribute.g
            yield from attribute.graphs


def graphs_by_path(graph: onnx.GraphProto, path: GraphPath = ()) -> Iterator[tuple[GraphPath, onnx.GraphProto]]:
    """``graph`` and every branch below it, parents before their branches, each with its path."""
    yield path, graph
    for index, branch in enumerate(branches(graph)):
        yield from graphs_by_path(branch, (*path, index))


def _common_prefix(paths: list[GraphPath]) -> GraphPath:
    shortest = min(paths, key=len)
    depth = 0
    while depth < len(shortest) and all(path[depth] == shortest[depth] for path in paths):
        depth += 1
    return shortest[:depth]


def sink_initializers(model: onnx.ModelProto) -> int:
    """Move each initializer into the deepest branch that holds every node reading it; returns how many moved.

    Computes the same: a branch may read names of the graphs around it, and here it owns them instead.
    """
    graphs = dict(graphs_by_path(model.graph))
    readers: dict[str, list[GraphPath]] = {}  # name -> the path of every graph whose nodes read it
    for path, graph in graphs.items():
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(path)
    moved = 0
    for path, graph in graphs.items():  # parents first: a moved initializer lands where it stays
        staying = []
        for initializer in graph.initializer:
            target = _common_prefix(readers[initializer.name]) if initializer.name in readers else path
            if len(target) > len(path):
                graphs[target].initializer.append(initializer)
                moved += 1
            else:
                staying.append(initializer)
        del graph.initializer[:]
        graph.initializer.extend(staying)
    return moved


def prepare_for_session(path: Path) -> Path:
    """Sink the weights of the graph at ``path`` into the branches that read them (``sink_initializers``)."""
    model = onnx.load(str(path))
    if sink_initializers(model):
        onnx.save(model, str(path))
    return path


class OneGraphRuntime:
    """One-graph ONNX Runtime sessions of a converted model at batch size 1, exported when a run first needs them.

    Keeps a copy of the fp32 encoder and method, taken at conversion, to export from: one graph
    for ``early_exit`` on and one for off, and, for a method whose knob cannot be a graph input,
    one per knob value. Each graph runs as one session call per input and gives the engine's
    ``BatchResult`` of that input, without the per-layer reports (a caller that wants each
    layer's values runs the engine's per-layer path instead).
    """

    def __init__(self, encoder: Encoder, method: Method, int8: bool):
        self.encoder, self.method, self.int8 = copy.deepcopy(encoder).eval(), copy.deepcopy(method).eval(), int8
        # eager attention exports as plain MatMul/Softmax, which ONNX Runtime runs faster at batch size 1 than sdpa's
        # decomposition (the benchmark's parity row)
        self.encoder.bert.set_attn_implementation("eager")
        self._folder = tempfile.TemporaryDirectory(prefix="adaptive-bert-graph-")  # removed with the runtime
        self.knob_is_input: dict[bool, bool] = {}  # early_exit -> whether its graph takes the knob as an input
        self.graphs: dict[tuple[bool, float | None], Path] = {}  # key -> the graph file its session runs
        self.sessions: dict[tuple[bool, float | None], object] = {}  # key -> ONNX Runtime session

    def key(self, settings: RunSettings) -> tuple[bool, float | None]:
        """Which graph runs ``settings``: (early_exit, the knob value where it is baked in, else None)."""
        return settings.early_exit, None if self.knob_is_input[settings.early_exit] else settings.threshold

    def session(self, settings: RunSettings):
        """The session that runs ``settings``, exported (and quantized) on first use."""
        if settings.early_exit not in self.knob_is_input or self.key(settings) not in self.sessions:
            self.add(settings)
        return self.sessions[self.key(settings)]

    def add(self, settings: RunSettings) -> None:
        path = Path(self._folder.name) / f"graph-{len(self.graphs)}-fp32.onnx"
        self.knob_is_input[settings.early_exit] = export_one_graph(self.encoder, self.method, settings, path)
        if self.int8:
            path = quantize_onnx(path, path.with_name(path.name.replace("fp32", "int8")), one_graph=True)
        self.graphs[self.key(settings)] = prepare_for_session(path)
        self.sessions[self.key(settings)] = new_session(path)

    def run(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        settings: RunSettings,
    ) -> BatchResult:
        """One input through its graph: answer, exit layer and executed layers as the engine has them."""
        session = self.session(settings)
        given = {
            "input_ids": input_ids.numpy(),
            "attention_mask": attention_mask.numpy(),
            "token_type_ids": np.zeros_like(input_ids.numpy()) if token_type_ids is None else token_type_ids.numpy(),
            "threshold": np.array(0.0 if settings.threshold is None else settings.threshold, dtype=np.float32),
        }
        answer, exit_layer, executed = session.run(
            None, {item.name: given[item.name] for item in session.get_inputs()}
        )
        return graph_result(torch.from_numpy(answer), exit_layer.tolist(), executed.tolist())


def graph_result(answer: torch.Tensor, exit_layer: list[int], executed: list[int]) -> BatchResult:
    """A graph's outputs as the engine's ``BatchResult`` of one row (bypassed: ``ran`` all False; no reports).

    ``exit_layer`` and ``executed`` come as lists: reading single values off tensors costs more than the
    lists at batch size 1.
    """
    num_layers = len(executed)
    reached = exit_layer[0] or num_layers
    row = torch.zeros(1, dtype=torch.long)
    bypassed = torch.zeros(1, dtype=torch.bool)
    records = [LayerRecord(row, None if executed[layer] else bypassed, {}) for layer in range(reached)]
    return BatchResult(outputs=answer, exit_layer=torch.tensor(exit_layer), layers=records, num_layers=num_layers)
