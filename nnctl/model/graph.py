"""Graph: a validated spec -> layers in topological order with every shape inferred.

No data is needed: unknown references, cycles, duplicate names, layers that never reach the
output and shape conflicts are all found here, before a file is read. nnctl.model.parameters
then holds the weights' values.
"""
from __future__ import annotations

import collections
import math
from typing import NamedTuple

from nnctl.core.autograd import Tensor
from nnctl.core.random import STREAM_INIT, rng_for
from nnctl.errors import SpecError, did_you_mean
from nnctl.model.activations import ACTIVATIONS
from nnctl.model.initializers import INITIALIZERS
from nnctl.model.layers import LAYERS
from nnctl.model.layers.base import ShapeConflict
from nnctl.options import Choice

# Beyond this many values one weight cannot even be indexed by NumPy (8-byte elements).
MAX_WEIGHT_VALUES = (2**63 - 1) // 8


class Node(NamedTuple):
    name: str
    layer: object  # nnctl.model.layers.Layer
    inputs: list  # names
    index: int  # position in the spec's `layers`


def reference_problems(inputs, layers, problem) -> list:
    """Duplicate names and unknown or self references; `problem(path, message)` makes a Problem.

    Also run by spec validation, so these are reported together with the spec's other problems.
    """
    problems = []
    known = dict.fromkeys(inputs)
    for layer in layers:
        if layer.name in known:
            what = "an input" if layer.name in inputs else f"layer {layer.name!r} at layers[{next(l.index for l in layers if l.name == layer.name)}]"
            problems.append(problem(("layers", layer.index, "name"), f"expected a unique name, received {layer.name!r}, already {what}"))
        known[layer.name] = layer
    for layer in layers:
        for i, ref in enumerate(layer.inputs):
            if ref not in known:
                path = ("layers", layer.index, "from") + ((i,) if len(layer.inputs) > 1 else ())
                problems.append(problem(path, f"expected the name of an input or layer, received {ref!r}{did_you_mean(ref, known)}"))
            elif ref == layer.name:
                problems.append(problem(("layers", layer.index, "from"), f"expected another layer's name, received its own name {ref!r} (a cycle)"))
    return problems


class Model:
    def __init__(self, spec):
        self.spec = spec
        self.input_shapes = dict(spec.inputs)
        self.outputs = [output.name for output in spec.outputs]
        self.nodes = self._order_and_build(spec)
        self.shapes = {**self.input_shapes, **{n.name: n.layer.output_shape for n in self.nodes}}
        # Trainable weights first (layer order within each group): the optimizer steps one range.
        every = [(f"{n.name}/{w.name}", w) for n in self.nodes for w in n.layer.weights]
        self.weight_specs = [kw for kw in every if kw[1].trainable] + [kw for kw in every if not kw[1].trainable]
        # Inputs read as ids (by an embedding): their value range, for random batches and gradcheck.
        self.id_inputs = {ref: n.layer.id_range() for n in self.nodes for ref in n.inputs
                          if ref in self.input_shapes and n.layer.id_range() is not None}
        # Per node, (param name, weights-file key) pairs: built once, not on every forward pass.
        self._weight_keys = [[(w.name, f"{n.name}/{w.name}") for w in n.layer.weights] for n in self.nodes]

    # --- compile-time checks ---------------------------------------------------------------------
    def _order_and_build(self, spec) -> list[Node]:
        problems = reference_problems(spec.inputs, spec.layers, spec.problem)
        if problems:
            raise SpecError(problems)

        order = self._topological(spec, problems)
        if problems:
            raise SpecError(problems)
        self._check_reachable(spec, problems)
        if problems:
            raise SpecError(problems)

        nodes, shapes = [], dict(spec.inputs)
        for layer_spec in order:
            layer = LAYERS[layer_spec.type](layer_spec.name, layer_spec.type, layer_spec.config)
            if any(ref not in shapes for ref in layer_spec.inputs):
                continue  # an input layer failed to build; its own error is already reported
            try:
                shapes[layer.name] = layer.build([shapes[ref] for ref in layer_spec.inputs])
            except ShapeConflict as exc:
                problems.append(spec.problem(("layers", layer_spec.index), f"{layer.type_name} layer {layer.name!r}: {exc}"))
                continue
            problem = _activation_axis_problem(spec, layer_spec, shapes[layer.name])
            if problem is not None:
                problems.append(problem)
                continue
            nodes.append(Node(layer.name, layer, layer_spec.inputs, layer_spec.index))
        if problems:
            raise SpecError(problems)
        return nodes

    @staticmethod
    def _topological(spec, problems):
        """Layers ordered so each comes after its inputs (Kahn's algorithm); name any loop."""
        by_name = {layer.name: layer for layer in spec.layers}
        waiting = {layer.name: {r for r in layer.inputs if r in by_name} for layer in spec.layers}
        consumers = {name: [] for name in by_name}  # in spec order: ties keep the spec's order
        for layer in spec.layers:
            for ref in waiting[layer.name]:
                consumers[ref].append(layer.name)
        order = []
        ready = collections.deque(layer.name for layer in spec.layers if not waiting[layer.name])
        while ready:
            name = ready.popleft()
            order.append(by_name[name])
            for other in consumers[name]:
                deps = waiting[other]
                deps.discard(name)
                if not deps:
                    ready.append(other)
        if len(order) < len(spec.layers):
            stuck = {name for name, deps in waiting.items() if deps}
            start = min(stuck, key=lambda n: by_name[n].index)
            loop, node = [start], next(iter(sorted(waiting[start])))
            while node not in loop:
                loop.append(node)
                node = next(iter(sorted(waiting[node])))
            loop = loop[loop.index(node):] + [node]
            problems.append(
                spec.problem(("layers", by_name[start].index, "from"), "expected an acyclic graph, received a cycle: " + " -> ".join(loop))
            )
        return order

    @staticmethod
    def _check_reachable(spec, problems):
        by_name = {layer.name: layer for layer in spec.layers}
        outputs = [output.name for output in spec.outputs]
        needed, stack = set(), list(outputs)
        while stack:
            name = stack.pop()
            if name in needed:
                continue
            needed.add(name)
            if name in by_name:
                stack.extend(by_name[name].inputs)
        target = f"the output {outputs[0]!r}" if len(outputs) == 1 else f"an output ({', '.join(map(repr, outputs))})"
        for layer in spec.layers:
            if layer.name not in needed:
                problems.append(spec.problem(("layers", layer.index), f"expected every layer to lead to {target}, received layer {layer.name!r}, which does not"))
        for name in spec.inputs:
            if name not in needed:
                problems.append(spec.problem(("inputs", name), f"expected every input to lead to {target}, received input {name!r}, which does not"))

    # --- weights -------------------------------------------------------------------------------
    @property
    def weight_shapes(self) -> dict:
        return {key: w.shape for key, w in self.weight_specs}

    def initial_weights(self, seed: int) -> dict:
        """Host float64 arrays from each weight's initializer, drawn in `weight_specs` order."""
        import numpy

        rng = rng_for(seed, STREAM_INIT)
        limit = float(numpy.finfo(self.spec.dtype).max)
        values = {}
        node_of = {f"{n.name}/{w.name}": n for n in self.nodes for w in n.layer.weights}
        for key, w in self.weight_specs:
            name, options = w.initializer.name, w.initializer.options
            node = node_of[key]
            where = ("layers", node.index, f"{w.name}_initializer")
            size = math.prod(w.shape)
            if size > MAX_WEIGHT_VALUES:
                raise SpecError(self.spec.problem(("layers", node.index), f"expected a weight small enough to allocate, received {key} of shape {tuple(w.shape)} ({size:.3g} values)"))
            try:
                value = INITIALIZERS[name].draw(rng, w.shape, w.fan_in, w.fan_out, **options)
            except ValueError as exc:
                raise SpecError(self.spec.problem(where, str(exc))) from None
            except OverflowError as exc:
                raise SpecError(self.spec.problem(where, f"expected initializer options whose range is a finite number, received {options} ({exc})")) from None
            except MemoryError:
                raise SpecError(self.spec.problem(("layers", node.index), f"expected weights that fit in memory, received {key} of shape {tuple(w.shape)} ({size:.3g} values)")) from None
            worst = float(numpy.abs(value).max()) if value.size else 0.0
            if not worst <= limit:  # also true for NaN
                raise SpecError(self.spec.problem(
                    where, f"expected initial values that are finite in {self.spec.dtype} (|x| <= {limit:.3g}), received {key} values up to {worst:.3g}"))
            values[key] = value
        return values

    # --- forward -------------------------------------------------------------------------------
    def forward(self, weights: dict, feeds: dict, ctx) -> list[Tensor]:
        """The output tensors (in `outputs` order) for input arrays/tensors `feeds`; `weights` maps
        keys to tensors."""
        # Ids are not tapped: no gradient flows to them, and a nudged id would be no id.
        values = {name: feeds[name] if name in self.id_inputs else ctx.tap(name, feeds[name]) for name in self.input_shapes}
        for node, keys in zip(self.nodes, self._weight_keys):
            own = {name: weights[key] for name, key in keys}
            out = node.layer.call([values[ref] for ref in node.inputs], own, ctx)
            values[node.name] = ctx.tap(node.name, out)
        return [values[name] for name in self.outputs]


def _activation_axis_problem(spec, layer_spec, output_shape):
    """A softmax axis must name an axis of the (batch, *per-sample) array it normalises."""
    if layer_spec.type in ACTIVATIONS:
        options, path = layer_spec.config, ("layers", layer_spec.index, "axis")
    elif isinstance(layer_spec.config.get("activation"), Choice):
        options, path = layer_spec.config["activation"].options, ("layers", layer_spec.index, "activation", "axis")
    else:
        return None
    axis = options.get("axis")
    rank = len(output_shape) + 1  # with the batch axis
    if axis is None or -rank <= axis < rank:
        return None
    return spec.problem(path, f"expected an axis in [-{rank}, {rank - 1}] of the (batch, {', '.join(map(str, output_shape))}) values, received {axis}")


class ForwardContext:
    """What a forward pass needs besides weights and inputs.

    `tap(name, tensor)` sees every named intermediate value: gradcheck uses it to record nodes
    and to perturb them; in training it is the identity. `updates_state` false leaves layer state
    (batch normalization's moving statistics) as it is in a training-mode pass: a gradient check's.
    """

    def __init__(self, backend, training=False, dropout_rng=None, updates_state=True):
        self.backend = backend
        self.training = training
        self.dropout_rng = dropout_rng
        self.updates_state = updates_state

    def tap(self, name, tensor):
        return tensor
