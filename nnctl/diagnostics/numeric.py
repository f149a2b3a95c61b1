"""Numeric gradients: one batch's loss, differentiated by autograd once and by central
differences element by element, for every trainable weight and every named node.

L is what training minimises: the loss plus any kernel_regularizer penalty. gradcheck and
explain both compare the two through a `Probe`.
"""
from __future__ import annotations

from nnctl.core import ops
from nnctl.core.autograd import Tensor, backward
from nnctl.core.random import STREAM_GRADCHECK_DROPOUT, rng_for
from nnctl.model.graph import ForwardContext


class Recorder(ForwardContext):
    """Records every tapped node (with retained gradient) and can nudge one element of one node.

    In training mode (`dropout_rng` given) it leaves layer state alone, and each pass draws the
    same dropout masks from a fresh generator: L is one function of the weights."""

    def __init__(self, backend, nudge=None, dropout_rng=None):
        super().__init__(backend, training=dropout_rng is not None, dropout_rng=dropout_rng, updates_state=False)
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
    gradients (in `params.grad_views` and on `nodes`), and central differences on request.

    `training`: the loss as a training step computes it (batch normalization from the batch's
    statistics, dropout with masks fixed for the probe), the gradient training follows; else as
    evaluation computes it (moving statistics, no dropout)."""

    def __init__(self, session, inputs: dict, targets, training: bool = True):
        backend = session.backend
        self.session = session
        self.training = training
        self.inputs = {k: backend.asarray(v, dtype="float64") for k, v in inputs.items()}
        self.targets = {name: backend.asarray(values) for name, values in targets.items()}
        params = session.params
        recorder = self._recorder()
        params.zero_grad()
        loss = session.objective(session.model.forward(params.tensors, self.inputs, recorder), self.targets, params.tensors)
        backward(loss)
        self.loss = float(loss.value)
        self.nodes = recorder.nodes  # name -> tensor, with .grad where the loss depends on it

    def loss_at(self, nudge=None) -> float:
        """The loss with node element `nudge` = (name, flat index, delta) moved, or as it is."""
        session = self.session
        weights = session.params.frozen()
        outputs = session.model.forward(weights, self.inputs, self._recorder(nudge))
        return float(session.objective(outputs, self.targets, weights).value)

    def _recorder(self, nudge=None) -> Recorder:
        rng = rng_for(self.session.spec.seed, STREAM_GRADCHECK_DROPOUT) if self.training else None
        return Recorder(self.session.backend, nudge, rng)

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
