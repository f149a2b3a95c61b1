"""The layers beyond dense against PyTorch in float64: normalization, merges, shapes, embeddings.

Seeded random graphs that contain each layer type are trained through `Session.gradients` (the
compiled step `fit` runs) and rebuilt in torch from nnctl's initial weights. Forward, loss, every
gradient, and 5 Adam steps (weights after each) agree to 1e-10; batch normalization trains in
training mode, then both predict in inference mode from their moving statistics.

The conversions, as the README documents them: torch's BatchNorm momentum is 1 - Keras' momentum,
and torch updates its running variance with the unbiased batch variance where Keras (and nnctl)
use the biased one, so the expected moving variance is derived from torch's running variance by
undoing that factor n / (n - 1).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from nnctl.model.graph import ForwardContext  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-10)
BATCH = 6
STEPS = 5
ACTIVATIONS = ["tanh", "relu", "sigmoid", "elu", "linear"]
TORCH_ACTIVATIONS = {"tanh": torch.tanh, "relu": F.relu, "sigmoid": torch.sigmoid, "elu": F.elu, "linear": lambda z: z}


def _dense(name, source, units, activation):
    return {"name": name, "type": "dense", "from": source, "units": int(units), "activation": activation,
            "bias_initializer": {"type": "random_normal", "stddev": 0.3}}


def _affine_initializers():
    """Random gamma and beta, so that their gradients meet something other than ones and zeros."""
    return {"gamma_initializer": {"type": "random_normal", "mean": 1.0, "stddev": 0.3},
            "beta_initializer": {"type": "random_normal", "stddev": 0.3}}


def random_graph(kind: str, seed: int):
    """(inputs, layers, loss) of a seeded random graph containing a `kind` layer."""
    rng = np.random.default_rng(seed)
    act = lambda: ACTIVATIONS[rng.integers(len(ACTIVATIONS))]  # noqa: E731
    width = int(rng.integers(2, 6))
    inputs = {"x": [int(rng.integers(2, 5))]}
    loss = "mse"
    towers = [_dense("a", "x", width, act()), _dense("b", "x", width, act()), _dense("c", "x", width, act())]
    if kind == "batch_normalization":
        momentum = float(rng.choice([0.99, 0.9, 0.5]))
        layers = [towers[0], {"name": "bn", "type": "batch_normalization", "from": "a", "momentum": momentum,
                              "epsilon": float(rng.choice([1e-3, 1e-5])), **_affine_initializers()},
                  _dense("h", "bn", int(rng.integers(2, 5)), act()),
                  {"name": "bn2", "type": "batch_normalization", "from": "h"}]
        source = "bn2"
    elif kind == "layer_normalization":
        center = bool(rng.integers(2))
        layers = [towers[0], {"name": "ln", "type": "layer_normalization", "from": "a", "center": center,
                              "epsilon": float(rng.choice([1e-3, 1e-5])), **_affine_initializers()}]
        source = "ln"
    elif kind in ("multiply", "average", "maximum", "minimum"):
        n = int(rng.integers(2, 4))
        layers = towers[:n] + [{"name": "m", "type": kind, "from": [t["name"] for t in towers[:n]]}]
        source = "m"
    elif kind == "subtract":
        layers = towers[:2] + [{"name": "m", "type": "subtract", "from": ["a", "b"]}]
        source = "m"
    elif kind == "dot":
        normalize = bool(seed % 2)
        layers = towers[:2] + [{"name": "m", "type": "dot", "from": ["a", "b"], "axes": 1, "normalize": normalize}]
        source = "m"
        loss = {"type": "binary_crossentropy", "from_logits": True}
    elif kind in ("reshape", "flatten"):
        layers = [_dense("a", "x", 6, act()), {"name": "r", "type": "reshape", "from": "a", "target_shape": [3, 2]},
                  {"name": "t", "type": "tanh", "from": "r"}, {"name": "f", "type": "flatten", "from": "t"}]
        source = "f"
    elif kind == "embedding":
        rows = int(rng.integers(3, 7))
        inputs["ids"] = [2]
        layers = [{"name": "e", "type": "embedding", "from": "ids", "input_dim": rows, "output_dim": width},
                  {"name": "f", "type": "flatten", "from": "e"}, towers[0],
                  {"name": "j", "type": "concat", "from": ["f", "a"]}]
        source = "j"
    else:
        raise ValueError(kind)
    if kind != "dot":
        layers.append(_dense("out", source, int(rng.integers(1, 4)), "linear"))
    return inputs, layers, loss


class TorchGraph(torch.nn.Module):
    """The spec's layers in torch, initialised from nnctl's weights (nn.Linear weight = kernel.T)."""

    def __init__(self, layers, weights: dict):
        super().__init__()
        self.layers = layers
        self.mods = torch.nn.ModuleDict()
        t = lambda key: torch.from_numpy(weights[key].copy())  # noqa: E731
        with torch.no_grad():
            for layer in layers:
                name, kind = layer["name"], layer["type"]
                if kind == "dense":
                    mod = torch.nn.Linear(*weights[f"{name}/kernel"].shape, dtype=torch.float64)
                    mod.weight.copy_(t(f"{name}/kernel").T)
                    mod.bias.copy_(t(f"{name}/bias"))
                elif kind == "batch_normalization":
                    units = weights[f"{name}/gamma"].shape[0]
                    mod = torch.nn.BatchNorm1d(units, eps=layer.get("epsilon", 1e-3), momentum=1 - layer.get("momentum", 0.99), dtype=torch.float64)
                    mod.weight.copy_(t(f"{name}/gamma"))
                    mod.bias.copy_(t(f"{name}/beta"))
                    mod.running_mean.copy_(t(f"{name}/moving_mean"))
                    mod.running_var.copy_(t(f"{name}/moving_variance"))
                elif kind == "layer_normalization":
                    units = weights[f"{name}/gamma"].shape[0]
                    mod = torch.nn.LayerNorm(units, eps=layer.get("epsilon", 1e-3), bias=layer.get("center", True), dtype=torch.float64)
                    mod.weight.copy_(t(f"{name}/gamma"))
                    if layer.get("center", True):
                        mod.bias.copy_(t(f"{name}/beta"))
                elif kind == "embedding":
                    mod = torch.nn.Embedding(*weights[f"{name}/embeddings"].shape, dtype=torch.float64)
                    mod.weight.copy_(t(f"{name}/embeddings"))
                else:
                    continue
                self.mods[name] = mod

    def forward(self, feeds):
        values = dict(feeds)
        for layer in self.layers:
            name, kind = layer["name"], layer["type"]
            ins = [values[n] for n in ([layer["from"]] if isinstance(layer["from"], str) else layer["from"])]
            if kind == "dense":
                out = TORCH_ACTIVATIONS[layer["activation"]](self.mods[name](ins[0]))
            elif kind in ("batch_normalization", "layer_normalization"):
                out = self.mods[name](ins[0])
            elif kind == "embedding":
                out = self.mods[name](ins[0].long())
            elif kind == "concat":
                out = torch.cat(ins, dim=-1)
            elif kind == "multiply":
                out = ins[0]
                for x in ins[1:]:
                    out = out * x
            elif kind == "average":
                out = sum(ins) / len(ins)
            elif kind in ("maximum", "minimum"):
                out = ins[0]
                for x in ins[1:]:
                    out = (torch.maximum if kind == "maximum" else torch.minimum)(out, x)
            elif kind == "subtract":
                out = ins[0] - ins[1]
            elif kind == "dot":
                a, b = ins
                if layer["normalize"]:  # Keras' floor 1e-12 on the squared norm is torch's 1e-6 on the norm
                    a, b = F.normalize(a, dim=-1, eps=1e-6), F.normalize(b, dim=-1, eps=1e-6)
                out = (a * b).sum(-1, keepdim=True)
            elif kind == "reshape":
                out = ins[0].reshape(ins[0].shape[0], *layer["target_shape"])
            elif kind == "flatten":
                out = ins[0].flatten(1)
            elif kind == "tanh":
                out = torch.tanh(ins[0])
            else:
                raise ValueError(kind)
            values[name] = out
        return values[self.layers[-1]["name"]]

    def arrays(self, grad=False) -> dict:
        """Trainable values (or their gradients) keyed like nnctl's weights, kernels as (in, out)."""
        read = lambda p: (p.grad if grad else p.detach()).numpy()  # noqa: E731
        out = {}
        for name, mod in self.mods.items():
            if isinstance(mod, torch.nn.Linear):
                out[f"{name}/kernel"], out[f"{name}/bias"] = read(mod.weight).T, read(mod.bias)
            elif isinstance(mod, torch.nn.Embedding):
                out[f"{name}/embeddings"] = read(mod.weight)
            else:
                out[f"{name}/gamma"] = read(mod.weight)
                if mod.bias is not None:
                    out[f"{name}/beta"] = read(mod.bias)
        return out


KINDS = ["batch_normalization", "layer_normalization", "multiply", "subtract", "average", "maximum", "minimum",
         "dot", "reshape", "flatten", "embedding"]


def _setup(make_session, kind, seed, optimizer="sgd"):
    inputs, layers, loss = random_graph(kind, seed)
    session = make_session({"seed": seed, "inputs": inputs, "layers": layers, "loss": loss, "optimizer": optimizer})
    return session, TorchGraph(layers, session.params.to_host()), layers


def _batch(session, rng):
    feeds = {}
    for name, shape in session.model.input_shapes.items():
        embedding = next((n.layer for n in session.model.nodes if n.layer.type_name == "embedding" and name in n.inputs), None)
        if embedding is None:
            feeds[name] = rng.standard_normal((BATCH, *shape))
        else:
            feeds[name] = rng.integers(0, embedding.config["input_dim"], (BATCH, *shape)).astype(np.float64)
    units = session.heads[0].units
    if session.spec.outputs[0].loss.name == "binary_crossentropy":
        y = rng.integers(0, 2, (BATCH, units)).astype(np.float64)
    else:
        y = rng.standard_normal((BATCH, units))
    return feeds, y


def _torch_loss(session, output, y):
    y = torch.from_numpy(y.copy())
    if session.spec.outputs[0].loss.name == "binary_crossentropy":
        return F.binary_cross_entropy_with_logits(output, y, reduction="none").mean(-1).mean()
    return ((output - y) ** 2).mean(-1).mean()


def _train_step(session, model, feeds, y):
    """One batch through nnctl's compiled step and through torch; (nnctl loss, output), torch's."""
    loss, (output,), _, _ = session.gradients(feeds, {session.heads[0].name: y}, len(y), ForwardContext(session.backend, training=True))
    model.train()
    torch_output = model({k: torch.from_numpy(v.copy()) for k, v in feeds.items()})
    torch_loss = _torch_loss(session, torch_output, y)
    return float(loss), np.array(output), torch_loss, torch_output


class MovingVariance:
    """nnctl's expected moving variances from torch's running ones: same momentum conversion,
    the unbiased batch variance turned back into the biased one."""

    def __init__(self, model, layers):
        self.norms = {l["name"]: (model.mods[l["name"]], l.get("momentum", 0.99)) for l in layers if l["type"] == "batch_normalization"}
        self.expected = {name: mod.running_var.detach().numpy().copy() for name, (mod, _) in self.norms.items()}
        self.before = dict(self.expected)

    def snapshot(self):
        self.before = {name: mod.running_var.detach().numpy().copy() for name, (mod, _) in self.norms.items()}

    def update(self, samples):
        for name, (mod, momentum) in self.norms.items():
            torch_momentum = 1 - momentum
            unbiased = (mod.running_var.detach().numpy() - (1 - torch_momentum) * self.before[name]) / torch_momentum
            self.expected[name] = momentum * self.expected[name] + (1 - momentum) * unbiased * (samples - 1) / samples

    def check(self, weights, where):
        for name, (mod, _) in self.norms.items():
            np.testing.assert_allclose(weights[f"{name}/moving_mean"], mod.running_mean.numpy(), **TOL, err_msg=f"{name} mean {where}")
            np.testing.assert_allclose(weights[f"{name}/moving_variance"], self.expected[name], **TOL, err_msg=f"{name} variance {where}")
            assert not np.allclose(self.expected[name], mod.running_var.numpy(), rtol=1e-6), "the conversion is not exercised"

    def load_into_torch(self):
        """torch's running variances replaced by Keras' biased ones, for inference."""
        with torch.no_grad():
            for name, (mod, _) in self.norms.items():
                mod.running_var.copy_(torch.from_numpy(self.expected[name]))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", KINDS)
def test_forward_loss_and_gradients(make_session, kind, seed):
    session, model, layers = _setup(make_session, kind, seed)
    assert kind in {layer["type"] for layer in layers}
    rng = np.random.default_rng(100 + seed)
    feeds, y = _batch(session, rng)
    moving = MovingVariance(model, layers)
    loss, output, torch_loss, torch_output = _train_step(session, model, feeds, y)
    torch_loss.backward()
    np.testing.assert_allclose(output, torch_output.detach().numpy(), **TOL)
    np.testing.assert_allclose(loss, torch_loss.item(), **TOL)
    expected = model.arrays(grad=True)
    assert set(expected) == set(session.params.grad_views)
    for key, grad in session.params.grad_views.items():
        assert np.any(expected[key] != 0), key
        np.testing.assert_allclose(grad, expected[key], **TOL, err_msg=key)
    moving.update(BATCH)
    moving.check(session.params.to_host(), "after one step")


@pytest.mark.parametrize("kind", KINDS)
def test_adam_steps_then_inference(make_session, kind):
    session, model, layers = _setup(make_session, kind, 3, optimizer={"type": "adam", "learning_rate": 0.05})
    optimizer = session.make_optimizer()
    torch_optimizer = torch.optim.Adam(model.parameters(), lr=0.05, betas=(0.9, 0.999), eps=1e-7)
    moving = MovingVariance(model, layers)
    rng = np.random.default_rng(7)
    start = session.params.to_host()
    for step in range(STEPS):
        feeds, y = _batch(session, rng)
        moving.snapshot()
        loss, _, torch_loss, _ = _train_step(session, model, feeds, y)
        optimizer.step(session.params.flat, session.params.grad_flat)
        torch_optimizer.zero_grad()
        torch_loss.backward()
        torch_optimizer.step()
        moving.update(BATCH)
        np.testing.assert_allclose(loss, torch_loss.item(), **TOL, err_msg=f"step {step + 1}")
        weights = session.params.to_host()
        for key, value in model.arrays().items():
            np.testing.assert_allclose(weights[key], value, **TOL, err_msg=f"{key} after step {step + 1}")
        moving.check(weights, f"after step {step + 1}")
    assert any(not np.allclose(start[k], v) for k, v in session.params.to_host().items())

    # Inference: batch normalization from its moving statistics; torch in eval mode.
    feeds, _ = _batch(session, rng)
    moving.load_into_torch()
    model.eval()
    with torch.no_grad():
        expected = model({k: torch.from_numpy(v.copy()) for k, v in feeds.items()}).numpy()
    (got,) = session._step(BATCH).forward(feeds, ForwardContext(session.backend))
    np.testing.assert_allclose(got, expected, **TOL)
    if kind == "batch_normalization":
        model.train()
        with torch.no_grad():
            assert not np.allclose(model({k: torch.from_numpy(v.copy()) for k, v in feeds.items()}).numpy(), expected)


def test_graphs_cover_every_new_layer_type():
    from nnctl.model.layers import LAYERS

    seen = {layer["type"] for kind in KINDS for seed in range(4) for layer in random_graph(kind, seed)[1]}
    assert set(LAYERS) - {"dropout", "add", "softmax", "relu", "sigmoid", "linear", "leaky_relu", "elu", "gelu", "softplus"} <= seen
