"""The compiled training step: a model's graph lowered once to flat lists of closures.

Autograd (nnctl.core.autograd) records a fresh graph on every call: right for gradcheck, explain and
any function of tensors, but each training step then pays for Tensors, closures, a topological
sort and fresh arrays, which on a small net cost more than its arithmetic. A model's graph is
static once compiled from the spec, so `TrainStep` lowers it once per batch size: each layer
becomes a forward and a backward closure over buffers allocated here (`Layer.compile`), weight
gradients are written straight into the flat gradient buffer (no zeroing, no accumulation),
the loss gives its value and its gradient in one pass (`Loss.compile`), and a step is two loops.
Each forward closure gets the call's ForwardContext (training or inference, the dropout generator).

A layer or loss without a compiled form runs through autograd on its own (`_through_autograd`),
so every spec compiles; tests/test_plan.py checks each layer, activation and loss against autograd.
"""
from __future__ import annotations

from nnctl.core.autograd import Tensor, backward


class TrainStep:
    """Forward, loss and backward of one batch size; gradients land in `params.grad_flat`."""

    def __init__(self, session, batch: int):
        model, params, xp = session.model, session.params, session.backend.xp
        self.session = session
        slots = {name: i for i, name in enumerate([*model.input_shapes, *(node.name for node in model.nodes)])}
        self.slots = slots  # input or layer name -> its place in a forward's values
        self.input_slots = [(name, slots[name]) for name in model.input_shapes]
        self.output_slot = slots[model.output]
        self.n_slots = len(slots)
        self.names = [node.name for node in model.nodes]
        self.nodes = []  # (forward, backward, input slots, output slot, weight gradient views)
        for node in model.nodes:
            keys = {w.name: f"{node.name}/{w.name}" for w in node.layer.weights}
            weights = {name: params.views[key] for name, key in keys.items()}
            grads = {name: params.grad_views[key] for name, key in keys.items() if key in params.grad_views}
            needs_grad = [ref not in model.input_shapes for ref in node.inputs]
            compiled = node.layer.compile(xp, batch, session.dtype, weights, grads, needs_grad)
            if compiled is None:
                compiled = self._through_autograd(node.layer, weights, grads, needs_grad)
            self.nodes.append((*compiled, [slots[ref] for ref in node.inputs], slots[node.name], list(grads.values())))
        output_shape = (batch, *model.shapes[model.output])
        self.loss_and_grad = session.loss.compile(xp, output_shape, session.dtype) or self._loss_through_autograd(session.loss)

    def __call__(self, inputs: dict, targets, ctx):
        """(loss, output, penalty or None) as arrays; the loss includes the penalty, as in Keras."""
        values = self._forward(inputs, ctx)
        output = values[self.output_slot]
        loss, grad = self.loss_and_grad(output, targets)

        grads = [None] * self.n_slots
        grads[self.output_slot] = grad
        for _, node_backward, ins, out, weight_grads in reversed(self.nodes):
            g = grads[out]
            if g is None:  # nothing downstream depends on it: its weights get no gradient
                for view in weight_grads:
                    view.fill(0)
                continue
            for slot, input_grad in zip(ins, node_backward(g)):
                if input_grad is not None:
                    assert input_grad.shape == values[slot].shape, (
                        f"{self.names[out - len(self.input_slots)]}: gradient of shape {input_grad.shape} "
                        f"for an input of shape {values[slot].shape}")
                    # Not in place: an input gradient may be a view of, or the same array as, another.
                    grads[slot] = input_grad if grads[slot] is None else grads[slot] + input_grad
        penalty = self._penalty() if self.session.regularized else None
        return (loss if penalty is None else loss + penalty), output, penalty

    def forward(self, inputs: dict, ctx, layer: str | None = None):
        """The output for a batch (or layer `layer`'s), nothing else (evaluation, prediction). It
        lives in this step's buffers: the next call overwrites it."""
        return self._forward(inputs, ctx)[self.output_slot if layer is None else self.slots[layer]]

    def _forward(self, inputs, ctx) -> list:
        values = [None] * self.n_slots
        for name, slot in self.input_slots:
            values[slot] = inputs[name]
        for forward, _, ins, out, _ in self.nodes:
            values[out] = forward(ctx, *[values[i] for i in ins])
        return values

    def wrap(self, wrapper) -> None:
        """Replace every closure by wrapper(name, part, closure), part "forward" or "backward";
        the loss (value and gradient in one call) is named "loss", part "forward". For `nnctl time`."""
        self.nodes = [(wrapper(name, "forward", forward), wrapper(name, "backward", node_backward), *rest)
                      for name, (forward, node_backward, *rest) in zip(self.names, self.nodes)]
        self.loss_and_grad = wrapper("loss", "forward", self.loss_and_grad)

    def _penalty(self):
        """The regularization penalty's value, its gradient added to the weights' gradients."""
        params = self.session.params
        weights = {key: Tensor(view, requires_grad=key in params.grad_views) for key, view in params.views.items()}
        penalty = self.session.penalty(weights)
        backward(penalty)
        for key, tensor in weights.items():
            if tensor.grad is not None:
                params.grad_views[key] += tensor.grad
        return penalty.value

    @staticmethod
    def _through_autograd(layer, weights, grads, needs_grad):
        """A layer's `call` recorded and differentiated by autograd, one step at a time."""
        recorded = []

        def forward(ctx, *inputs):
            tensors = [Tensor(x, requires_grad=needed) for x, needed in zip(inputs, needs_grad)]
            own = {name: Tensor(view, requires_grad=name in grads) for name, view in weights.items()}
            recorded[:] = [tensors, own, layer.call(tensors, own, ctx)]
            return recorded[2].value

        def node_backward(g):
            tensors, own, out = recorded
            backward(out, g)
            for name in grads:
                if own[name].grad is None:
                    grads[name].fill(0)
                else:
                    grads[name][...] = own[name].grad
            return tuple(t.grad if needed else None for t, needed in zip(tensors, needs_grad))

        return forward, node_backward

    @staticmethod
    def _loss_through_autograd(loss_fn):
        def loss_and_grad(output, targets):
            watched = Tensor(output, requires_grad=True)
            loss = loss_fn(watched, targets)
            backward(loss)
            return loss.value, watched.grad

        return loss_and_grad
