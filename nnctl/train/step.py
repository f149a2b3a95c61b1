"""The compiled training step: a model's graph lowered once to flat lists of closures.

Autograd (nnctl.core.autograd) records a fresh graph on every call: right for gradcheck, explain and
any function of tensors, but each training step then pays for Tensors, closures, a topological
sort and fresh arrays, which on a small net cost more than its arithmetic. A model's graph is
static once compiled from the spec, so `TrainStep` lowers it once per batch size: each layer
becomes a forward and a backward closure over buffers allocated here (`Layer.compile`), weight
gradients are written straight into the flat gradient buffer (no zeroing, no accumulation),
each output's loss gives its value and its gradient in one pass (`Loss.compile`), and a step is
two loops. With several outputs the trained loss is their weighted sum (nnctl.train.heads).
Each forward closure gets the call's ForwardContext (training or inference, the dropout generator).

A layer or loss without a compiled form runs through autograd on its own (`_through_autograd`),
so every spec compiles; tests/test_plan.py checks each layer, activation and loss against autograd.
"""
from __future__ import annotations

from nnctl.core.autograd import Tensor, backward
from nnctl.train.heads import weighted_total


class TrainStep:
    """Forward, loss and backward of one batch size; gradients land in `params.grad_flat`."""

    def __init__(self, session, batch: int):
        model, params, xp = session.model, session.params, session.backend.xp
        self.session = session
        slots = {name: i for i, name in enumerate([*model.input_shapes, *(node.name for node in model.nodes)])}
        self.slots = slots  # input or layer name -> its place in a forward's values
        self.input_slots = [(name, slots[name]) for name in model.input_shapes]
        self.output_slots = [slots[name] for name in model.outputs]
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
        self.heads = session.heads
        self.losses = [head.loss.compile(xp, (batch, *head.shape), session.dtype) or self._loss_through_autograd(head.loss)
                       for head in self.heads]

    def __call__(self, inputs: dict, targets: dict, ctx):
        """(loss, outputs, penalty or None, each output's loss or None) as arrays: the loss is the
        outputs' weighted sum (the one output's own loss when alone) and includes the penalty, as in
        Keras; each output's loss only with several outputs."""
        values = self._forward(inputs, ctx)
        outputs = [values[slot] for slot in self.output_slots]
        grads = [None] * self.n_slots
        own = []
        for head, loss_and_grad, output, slot in zip(self.heads, self.losses, outputs, self.output_slots):
            value, grad = loss_and_grad(output, targets[head.name])
            if head.weight != 1:
                grad *= head.weight  # the loss's own buffer
            # Each output's slot is distinct; another node's gradient is added to it below.
            grads[slot] = grad
            own.append(value)
        loss = weighted_total(self.heads, own)
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
        return (loss if penalty is None else loss + penalty), outputs, penalty, own if len(self.heads) > 1 else None

    def forward(self, inputs: dict, ctx) -> list:
        """The outputs for a batch, nothing else (evaluation, prediction). They live in this step's
        buffers: the next call overwrites them."""
        values = self._forward(inputs, ctx)
        return [values[slot] for slot in self.output_slots]

    def activations(self, inputs: dict, ctx, layer: str):
        """Layer (or input) `layer`'s values for a batch, in this step's buffers."""
        return self._forward(inputs, ctx)[self.slots[layer]]

    def _forward(self, inputs, ctx) -> list:
        values = [None] * self.n_slots
        for name, slot in self.input_slots:
            values[slot] = inputs[name]
        for forward, _, ins, out, _ in self.nodes:
            values[out] = forward(ctx, *[values[i] for i in ins])
        return values

    def wrap(self, wrapper) -> None:
        """Replace every closure by wrapper(name, part, closure), part "forward" or "backward";
        the losses (value and gradient in one call) are named "loss", part "forward". For `nnctl time`."""
        self.nodes = [(wrapper(name, "forward", forward), wrapper(name, "backward", node_backward), *rest)
                      for name, (forward, node_backward, *rest) in zip(self.names, self.nodes)]
        self.losses = [wrapper("loss", "forward", loss_and_grad) for loss_and_grad in self.losses]

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
