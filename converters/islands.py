"""Which nodes of an fmabs-edge graph keep full precision, found from the stable export scopes.

Two sets matter to the precision converters:

- **FP32 islands** (:data:`FP32_ISLANDS`): nodes that compute in FP32 in every variant, FP16 and
  INT8 alike, and never carry Quantize/DequantizeLinear. Each island is a rule over the graph,
  anchored on a scope set at export (:data:`~fmabs_edge.converters.export.SCORING_SCOPE`, the input
  resize scope), never on the exporter's generated node names.
- **The anomaly signal** (:func:`signal_nodes`): the nodes that form ``|T - S|`` (the stage
  difference scope), the per-channel standardisation of the teacher that feeds it, and the
  attention branch from the difference to its sigmoid. Normal-only calibration sets INT8 ranges
  from normal activations, so quantising these tensors would clip exactly what a defect produces;
  INT8 keeps them in float unless told otherwise.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable

import onnx

from fmabs_edge.converters.export import FEATURES_SCOPE, SCORING_SCOPE
from fmabs_edge.converters.input_resize import SCOPE as INPUT_RESIZE_SCOPE
from fmabs_edge.errors import ModelError

logger = logging.getLogger(__name__)

#: Scope of the stage difference ``|T_l - S_l|`` (the anomaly signal) in an exported graph.
DIFFERENCE_SCOPE = FEATURES_SCOPE + "difference/"
#: Element-wise ops with one constant operand: the ``(x - mean) / std`` standardisation of a stage.
_AFFINE_OPS = frozenset({"Sub", "Div", "Mul", "Add"})


class GraphIndex:
    """Producers and consumers of every tensor of one ONNX graph (no subgraphs)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        for node in graph.node:
            if any(
                attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                for attr in node.attribute
            ):
                raise ModelError(
                    f"Node '{node.name}' ({node.op_type}) holds a subgraph; fmabs-edge graphs have none. "
                    "Export the model with 'fmabs-edge export'."
                )
        self.nodes: list[onnx.NodeProto] = list(graph.node)
        self.constants: set[str] = {init.name for init in graph.initializer}
        self.constants.update(
            out for n in graph.node if n.op_type == "Constant" for out in n.output
        )
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)

    def in_scope(self, scope: str) -> list[onnx.NodeProto]:
        """Nodes whose name starts with ``scope``."""
        return [node for node in self.nodes if node.name.startswith(scope)]

    def activation_inputs(self, node: onnx.NodeProto) -> list[str]:
        """Inputs of ``node`` that are computed tensors (not initializers, Constants or empty)."""
        return [name for name in node.input if name and name not in self.constants]

    def ancestors(self, names: Iterable[str]) -> set[str]:
        """Names of every node upstream of the tensors ``names``."""
        seen: set[str] = set()
        stack = [self.producer[n] for n in names if n in self.producer]
        while stack:
            node = stack.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            stack.extend(self.producer[i] for i in node.input if i in self.producer)
        return seen

    def descendants(self, nodes: Iterable[onnx.NodeProto]) -> set[str]:
        """Names of ``nodes`` and of every node downstream of them."""
        seen: set[str] = set()
        stack = list(nodes)
        while stack:
            node = stack.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            for name in node.output:
                stack.extend(self.consumers.get(name, []))
        return seen


def scoring_feeders(index: GraphIndex, op_types: tuple[str, ...]) -> list[onnx.NodeProto]:
    """Nodes outside the scoring scope, of ``op_types``, whose outputs the scoring scope reads."""
    read = {name for node in index.in_scope(SCORING_SCOPE) for name in node.input}
    return [
        node
        for node in index.nodes
        if not node.name.startswith(SCORING_SCOPE)
        and node.op_type in op_types
        and set(node.output) & read
    ]


@dataclass(frozen=True)
class IslandRule:
    """One FP32 island: a name, why it stays FP32, and how its nodes are found."""

    name: str
    reason: str
    select: Callable[[GraphIndex], list[onnx.NodeProto]]


#: The FP32 islands of every precision variant, in one place. A test checks each on a real graph.
FP32_ISLANDS: tuple[IslandRule, ...] = (
    IslandRule(
        name="scoring",
        reason=(
            "channel means and resizes of the stage differences, (x - loc) / scale normalisation, "
            "the attention product, Gaussian smoothing and the max/top-k image score: sums and "
            "squares of many channels overflow FP16 (65 504), and the threshold compares scores "
            "to 1e-4"
        ),
        select=lambda index: index.in_scope(SCORING_SCOPE),
    ),
    IslandRule(
        name="attention output",
        reason="the 0..1 sigmoid map that multiplies the normalised map as (1 + A)",
        select=lambda index: scoring_feeders(index, ("Sigmoid",)),
    ),
    IslandRule(
        name="input resize",
        reason=(
            "the optional in-graph resize of camera frames (export --input-size): 0..255 pixels are "
            "interpolated, rounded and clipped; INT8 would coarsen them to steps of 2"
        ),
        select=lambda index: index.in_scope(INPUT_RESIZE_SCOPE),
    ),
)


def island_nodes(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Node names of each rule in :data:`FP32_ISLANDS`; an error if the scoring scope is absent."""
    index = GraphIndex(model)
    if not index.in_scope(SCORING_SCOPE):
        raise ModelError(
            f"The graph has no node under the scope '{SCORING_SCOPE}', so its FP32 islands cannot be "
            "found. Re-export the checkpoint with 'fmabs-edge export' (this fmabs-edge version)."
        )
    return {rule.name: [node.name for node in rule.select(index)] for rule in FP32_ISLANDS}


def signal_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes of the anomaly signal (see the module docstring), in graph order.

    Made of: the :data:`DIFFERENCE_SCOPE` nodes; upstream of them, the chain of element-wise ops
    with one constant operand (the teacher's per-channel standardisation); downstream of them, every
    node on a path to the attention sigmoid that feeds the scoring (the FIGA encoder).
    """
    index = GraphIndex(model)
    difference = index.in_scope(DIFFERENCE_SCOPE)
    if not difference:
        raise ModelError(
            f"The graph has no node under the scope '{DIFFERENCE_SCOPE}', so the anomaly-signal tensors "
            "that INT8 keeps in float cannot be found. Re-export the checkpoint with this fmabs-edge "
            "version, or quantise the signal too (signal_in_float=False / --signal quantize)."
        )
    chosen = {node.name for node in difference}

    # Upstream: the standardisation (x - mean) / std between a stage output and the difference.
    stack = [
        index.producer[name]
        for node in difference
        for name in index.activation_inputs(node)
        if name in index.producer
    ]
    while stack:
        node = stack.pop()
        if (
            node.name in chosen
            or node.op_type not in _AFFINE_OPS
            or len(index.activation_inputs(node)) != 1
        ):
            continue
        chosen.add(node.name)
        stack.extend(
            index.producer[n] for n in index.activation_inputs(node) if n in index.producer
        )

    # Downstream: the attention branch from the difference to its sigmoid.
    sigmoids = scoring_feeders(index, ("Sigmoid",))
    if sigmoids:
        between = index.descendants(difference) & index.ancestors(
            o for s in sigmoids for o in s.output
        )
        chosen.update(between)
    return [
        node.name
        for node in index.nodes
        if node.name in chosen and not node.name.startswith(SCORING_SCOPE)
    ]
