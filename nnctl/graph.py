"""Graph: a validated spec -> layers in topological order with every shape inferred.

No data is needed: unknown references, cycles, duplicate names, layers that never reach the
output and shape conflicts are all found here, before a file is read. `Parameters` then holds
every weight in one flat buffer (and every gradient in another) with a view per weight.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy

from nnctl.autograd import Tensor
from nnctl.errors import SpecError, did_you_mean
from nnctl.initializers import INITIALIZERS
from nnctl.layers import LAYERS, ShapeConflict, WeightSpec

# Independent random streams derived from the one seed (numpy SeedSequence spawn keys).
STREAM_INIT, STREAM_SPLIT, STREAM_SHUFFLE, STREAM_DROPOUT, STREAM_GRADCHECK = range(5)


def rng_for(seed: int, stream: int) -> numpy.random.Generator:
    return numpy.random.Generator(numpy.random.PCG64(numpy.random.SeedSequence(seed, spawn_key=(stream,))))


@dataclass
class Node:
    name: str
    layer: object  # nnctl.layers.Layer
    inputs: list  # names
    index: int  # position in the spec's `layers`


class Model:
    def __init__(self, spec):
        self.spec = spec
        self.input_shapes = dict(spec.inputs)
        self.output = spec.outputs
        self.nodes = self._order_and_build(spec)
        self.shapes = {**self.input_shapes, **{n.name: n.layer.output_shape for n in self.nodes}}
        self.weight_specs = [(f"{n.name}/{w.name}", w) for n in self.nodes for w in n.layer.weights]

    # --- compile-time checks ---------------------------------------------------------------------
    def _order_and_build(self, spec) -> list[Node]:
        problems = []
        known = dict.fromkeys(spec.inputs)
        for layer in spec.layers:
            if layer.name in known:
                what = "an input" if layer.name in spec.inputs else f"layer {layer.name!r} at layers[{next(l.index for l in spec.layers if l.name == layer.name)}]"
                problems.append(spec.problem(("layers", layer.index, "name"), f"expected a unique name, received {layer.name!r}, already {what}"))
            known[layer.name] = layer
        for layer in spec.layers:
            for i, ref in enumerate(layer.inputs):
                if ref not in known:
                    path = ("layers", layer.index, "from") + ((i,) if len(layer.inputs) > 1 else ())
                    problems.append(spec.problem(path, f"expected the name of an input or layer, received {ref!r}{did_you_mean(ref, known)}"))
                elif ref == layer.name:
                    problems.append(spec.problem(("layers", layer.index, "from"), f"expected another layer's name, received its own name {ref!r} (a cycle)"))
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
            nodes.append(Node(layer.name, layer, layer_spec.inputs, layer_spec.index))
        if problems:
            raise SpecError(problems)
        return nodes

    @staticmethod
    def _topological(spec, problems):
        """Layers ordered so each comes after its inputs (Kahn's algorithm); name any loop."""
        by_name = {layer.name: layer for layer in spec.layers}
        waiting = {layer.name: {r for r in layer.inputs if r in by_name} for layer in spec.layers}
        order = []
        ready = [layer.name for layer in spec.layers if not waiting[layer.name]]
        while ready:
            name = ready.pop(0)
            order.append(by_name[name])
            for other, deps in waiting.items():
                if name in deps:
                    deps.discard(name)
                    if not deps and other not in [l.name for l in order] and other not in ready:
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
        needed, stack = set(), [spec.outputs]
        while stack:
            name = stack.pop()
            if name in needed:
                continue
            needed.add(name)
            if name in by_name:
                stack.extend(by_name[name].inputs)
        for layer in spec.layers:
            if layer.name not in needed:
                problems.append(spec.problem(("layers", layer.index), f"expected every layer to lead to the output {spec.outputs!r}, received layer {layer.name!r}, which does not"))
        for name in spec.inputs:
            if name not in needed:
                problems.append(spec.problem(("inputs", name), f"expected every input to lead to the output {spec.outputs!r}, received input {name!r}, which does not"))

    # --- weights -------------------------------------------------------------------------------
    @property
    def weight_shapes(self) -> dict:
        return {key: w.shape for key, w in self.weight_specs}

    def initial_weights(self, seed: int) -> dict:
        """Host float64 arrays from each weight's initializer, drawn in layer order."""
        rng = rng_for(seed, STREAM_INIT)
        values = {}
        for key, w in self.weight_specs:
            name, options = w.initializer
            try:
                values[key] = INITIALIZERS[name].draw(rng, w.shape, w.fan_in, w.fan_out, **options)
            except ValueError as exc:
                node = next(n for n in self.nodes if key.startswith(n.name + "/"))
                raise SpecError(self.spec.problem(("layers", node.index, f"{w.name}_initializer"), str(exc))) from None
        return values

    # --- forward -------------------------------------------------------------------------------
    def forward(self, weights: dict, feeds: dict, ctx) -> Tensor:
        """The output tensor for input arrays/tensors `feeds`; `weights` maps keys to tensors."""
        values = {name: ctx.tap(name, feeds[name]) for name in self.input_shapes}
        for node in self.nodes:
            own = {w.name: weights[f"{node.name}/{w.name}"] for w in node.layer.weights}
            out = node.layer.call([values[ref] for ref in node.inputs], own, ctx)
            values[node.name] = ctx.tap(node.name, out)
        return values[self.output]


class ForwardContext:
    """What a forward pass needs besides weights and inputs.

    `tap(name, tensor)` sees every named intermediate value: gradcheck uses it to record nodes
    and to perturb them; in training it is the identity.
    """

    def __init__(self, backend, training=False, dropout_rng=None):
        self.backend = backend
        self.training = training
        self.dropout_rng = dropout_rng

    def tap(self, name, tensor):
        return tensor


class Parameters:
    """Every weight in one flat buffer, every gradient in another; per-weight views and tensors."""

    def __init__(self, model: Model, backend, dtype: str, values: dict):
        self.backend = backend
        xp = backend.xp
        sizes = [math.prod(w.shape) for _, w in model.weight_specs]
        self.flat = xp.zeros(sum(sizes), dtype=dtype)
        self.grad_flat = xp.zeros(sum(sizes), dtype=dtype)
        self.views, self.grad_views, self.tensors = {}, {}, {}
        offset = 0
        for (key, w), size in zip(model.weight_specs, sizes):
            self.views[key] = self.flat[offset:offset + size].reshape(w.shape)
            self.grad_views[key] = self.grad_flat[offset:offset + size].reshape(w.shape)
            offset += size
            self.views[key][...] = backend.asarray(values[key], dtype=dtype)
            tensor = Tensor(self.views[key], requires_grad=True)
            tensor.grad = self.grad_views[key]
            self.tensors[key] = tensor

    def load(self, values: dict) -> None:
        for key, view in self.views.items():
            view[...] = self.backend.asarray(values[key], dtype=view.dtype)

    def zero_grad(self) -> None:
        self.grad_flat.fill(0)

    def to_host(self) -> dict:
        return {key: self.backend.to_host(view).copy() for key, view in self.views.items()}

    def frozen(self) -> dict:
        """Tensors that need no gradient: for prediction, where no graph should be recorded."""
        return {key: Tensor(view) for key, view in self.views.items()}
