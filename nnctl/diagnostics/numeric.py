"""Numeric gradients: one batch's loss, differentiated by autograd once and by central
differences element by element, for every trainable weight and every named node.

L is what training minimises: the loss plus any kernel_regularizer penalty. gradcheck and
explain both compare the two through a `Probe`.
"""
from __future__ import annotations

from nnctl.core import ops
from nnctl.core.autograd import Tensor, backward
from nnctl.model.graph import ForwardContext


class Recorder(ForwardContext):
    """Records every tapped node (with retained gradient) and can nudge one element of one node."""

    def __init__(self, backend, nudge=None):
        super().__init__(backend)
        self.nodes = {}
        self.nudge = nudge  # (node name, flat index, delta)

    def tap(self, name, tensor):
        if not isinstance(tensor, Tensor):
            tensor = Tensor(tensor, requires_grad=True)
        if self.nudge is not None and self.nudge[0] == name:
            delta = self.backend.xp.zeros_like(tensor.value)
            delta.reshape(-1)[self.nudge[1]] = self.nudge[2]
            tensor = ops.add(tensor, delta)
        tensor.retain_grad = True
        self.nodes[name] = tensor
        return tensor


class Probe:
    """The loss of one batch in float64 at the session's weights: `loss` and the autograd
    gradients (in `params.grad_views` and on `nodes`), and central differences on request."""

    def __init__(self, session, inputs: dict, targets):
        backend = session.backend
        self.session = session
        self.inputs = {k: backend.asarray(v, dtype="float64") for k, v in inputs.items()}
        self.targets = backend.asarray(targets)
        params = session.params
        recorder = Recorder(backend)
        params.zero_grad()
        loss = session.objective(session.model.forward(params.tensors, self.inputs, recorder), self.targets, params.tensors)
        backward(loss)
        self.loss = float(loss.value)
        self.nodes = recorder.nodes  # name -> tensor, with .grad where the loss depends on it

    def loss_at(self, nudge=None) -> float:
        """The loss with node element `nudge` = (name, flat index, delta) moved, or as it is."""
        session = self.session
        weights = session.params.frozen()
        output = session.model.forward(weights, self.inputs, Recorder(session.backend, nudge))
        return float(session.objective(output, self.targets, weights).value)

    def weight_derivative(self, key: str, index: int, eps: float) -> float:
        """(L(w + eps) - L(w - eps)) / 2 eps for element `index` of weight `key`."""
        flat = self.session.params.views[key].reshape(-1)
        original = float(flat[index])
        try:
            flat[index] = original + eps
            up = self.loss_at()
            flat[index] = original - eps
            down = self.loss_at()
        finally:
            flat[index] = original
        return (up - down) / (2 * eps)

    def node_derivative(self, name: str, index: int, eps: float) -> float:
        """(L(v + eps) - L(v - eps)) / 2 eps for element `index` of node `name`'s value."""
        return (self.loss_at((name, index, eps)) - self.loss_at((name, index, -eps))) / (2 * eps)

    def node_gradient(self, name: str):
        """Autograd's dL/d(node), zeros where the loss does not depend on the node."""
        node = self.nodes[name]
        return node.grad if node.grad is not None else self.session.backend.xp.zeros_like(node.value)
