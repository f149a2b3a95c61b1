"""nnctl against PyTorch in float64: outputs, losses, every weight's gradient, and optimizer steps.

Random small graphs (MLPs of random widths and activations, a two-tower concat graph and an
add-merge graph) are declared as YAML specs and run through Session; the same graph is rebuilt
in torch from `session.params.to_host()` (nn.Linear weight = kernel.T). Keras-style losses are
written out in torch: mse/mae/huber are means over the last axis, then mean or sum over the batch;
probabilities are kept inside [1e-7, 1 - 1e-7] so that nnctl's clip is inactive.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from nnctl.core.autograd import backward  # noqa: E402
from nnctl.model.graph import ForwardContext  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-10)
BATCH = 6
HIDDEN_ACTIVATIONS = [
    "relu", "sigmoid", "tanh", "elu", "leaky_relu", "softplus", "gelu", "softmax", "linear",
    {"type": "elu", "alpha": 0.6}, {"type": "leaky_relu", "alpha": 0.05},
]


# --- graphs --------------------------------------------------------------------------------------
def _dense(name, source, units, activation):
    return {
        "name": name, "type": "dense", "from": source, "units": int(units), "activation": activation,
        "bias_initializer": {"type": "random_normal", "stddev": 0.3},
    }


def random_graph(kind: str, seed: int, out_units: int, out_activation):
    """(n_features, layers) for a seeded random graph of `kind`: mlp, two_tower or add."""
    rng = np.random.default_rng(seed)
    act = lambda: HIDDEN_ACTIVATIONS[rng.integers(len(HIDDEN_ACTIVATIONS))]  # noqa: E731
    width = lambda: int(rng.integers(2, 6))  # noqa: E731
    n_features = int(rng.integers(2, 5))
    layers = []
    if kind == "mlp":
        source = "x"
        for i in range(int(rng.integers(1, 3))):
            layers.append(_dense(f"h{i}", source, width(), act()))
            source = f"h{i}"
    elif kind == "two_tower":
        layers += [_dense("a", "x", width(), act()), _dense("b", "x", width(), act())]
        layers.append({"name": "join", "type": "concat", "from": ["a", "b"]})
        source = "join"
    elif kind == "add":
        units = width()
        layers += [_dense("a", "x", units, act()), _dense("b", "x", units, act())]
        layers.append({"name": "join", "type": "add", "from": ["a", "b"]})
        source = "join"
    else:
        raise ValueError(kind)
    layers.append(_dense("out", source, out_units, out_activation))
    return n_features, layers


def _activation(config):
    name, options = (config, {}) if isinstance(config, str) else (config["type"], config)
    alpha = options.get("alpha")
    return {
        "linear": lambda z: z,
        "relu": F.relu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "softmax": lambda z: torch.softmax(z, dim=-1),
        "elu": lambda z: F.elu(z, alpha=1.0 if alpha is None else alpha),
        "leaky_relu": lambda z: F.leaky_relu(z, negative_slope=0.2 if alpha is None else alpha),  # Keras' 0.2
        # torch switches to the identity above `threshold` (default 20); nnctl never does.
        "softplus": lambda z: F.softplus(z, threshold=40.0),
        "gelu": lambda z: F.gelu(z, approximate="tanh"),
    }[name]


class TorchGraph(torch.nn.Module):
    """The spec's layers in torch, initialised from nnctl's weights."""

    def __init__(self, layers, weights: dict):
        super().__init__()
        self.layers = layers
        self.linears = torch.nn.ModuleDict()
        for layer in layers:
            if layer["type"] != "dense":
                continue
            kernel = weights[f"{layer['name']}/kernel"]
            linear = torch.nn.Linear(*kernel.shape, dtype=torch.float64)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(kernel.T))
                linear.bias.copy_(torch.from_numpy(weights[f"{layer['name']}/bias"]))
            self.linears[layer["name"]] = linear

    def forward(self, x):
        values = {"x": x}
        for layer in self.layers:
            if layer["type"] == "dense":
                z = self.linears[layer["name"]](values[layer["from"]])
                values[layer["name"]] = _activation(layer["activation"])(z)
            elif layer["type"] == "concat":
                values[layer["name"]] = torch.cat([values[n] for n in layer["from"]], dim=-1)
            elif layer["type"] == "add":
                values[layer["name"]] = sum(values[n] for n in layer["from"])
        return values[self.layers[-1]["name"]]

    def grads(self) -> dict:
        """Gradients keyed like nnctl's weights, kernels as (in, out)."""
        out = {}
        for name, linear in self.linears.items():
            out[f"{name}/kernel"] = linear.weight.grad.numpy().T
            out[f"{name}/bias"] = linear.bias.grad.numpy()
        return out

    def weights(self) -> dict:
        out = {}
        for name, linear in self.linears.items():
            out[f"{name}/kernel"] = linear.weight.detach().numpy().T
            out[f"{name}/bias"] = linear.bias.detach().numpy()
        return out


# --- losses --------------------------------------------------------------------------------------
def _torch_per_sample(name, options, output, target):
    logits = options.get("from_logits", False)
    if name == "mse":
        return ((output - target) ** 2).mean(-1)
    if name == "mae":
        return (output - target).abs().mean(-1)
    if name == "huber":
        return F.huber_loss(output, target, reduction="none", delta=options["delta"]).mean(-1)
    if name == "binary_crossentropy":
        fn = F.binary_cross_entropy_with_logits if logits else F.binary_cross_entropy
        return fn(output, target, reduction="none").mean(-1)
    if name == "categorical_crossentropy":
        if logits:
            return F.cross_entropy(output, target, reduction="none")
        return -(target * torch.log(output / output.sum(-1, keepdim=True))).sum(-1)
    if name == "sparse_categorical_crossentropy":
        if logits:
            return F.cross_entropy(output, target, reduction="none")
        return F.nll_loss(torch.log(output / output.sum(-1, keepdim=True)), target, reduction="none")
    raise ValueError(name)


# (loss name, options, output activation)
LOSS_CASES = [
    ("mse", {}, "tanh"),
    ("mse", {}, "linear"),
    ("mae", {}, "linear"),
    ("huber", {"delta": 1.0}, "linear"),
    ("huber", {"delta": 0.3}, "linear"),
    ("binary_crossentropy", {}, "sigmoid"),
    ("binary_crossentropy", {"from_logits": True}, "linear"),
    ("categorical_crossentropy", {}, "softmax"),
    ("categorical_crossentropy", {}, "sigmoid"),  # rows not summing to 1: renormalised
    ("categorical_crossentropy", {"from_logits": True}, "linear"),
    ("sparse_categorical_crossentropy", {}, "softmax"),
    ("sparse_categorical_crossentropy", {"from_logits": True}, "linear"),
]


def _targets(rng, name, units, n=BATCH):
    if name == "sparse_categorical_crossentropy":
        labels = rng.integers(0, units, n)
        return labels, torch.from_numpy(labels)
    if name == "categorical_crossentropy":
        y = np.eye(units)[rng.integers(0, units, n)]
    elif name == "binary_crossentropy":
        y = rng.integers(0, 2, (n, units)).astype(np.float64)
    else:
        y = rng.standard_normal((n, units))
    return y, torch.from_numpy(y.copy())


def _setup(make_session, kind, seed, loss, options, out_activation, reduction="mean", optimizer="sgd", backend=None):
    rng = np.random.default_rng(1000 + seed)
    units = int(rng.integers(2, 5))
    n_features, layers = random_graph(kind, seed, units, out_activation)
    spec = {
        "seed": seed,
        "inputs": {"x": [n_features]},
        "layers": layers,
        "loss": {"type": loss, "reduction": reduction, **options},
        "optimizer": optimizer,
    }
    session = make_session(spec, backend=backend)
    model = TorchGraph(layers, session.params.to_host())
    return session, model, rng, n_features, units


def _nnctl_step(session, x, y):
    """Forward, loss and backward as `fit` does them; the gradients land in session.params."""
    backend = session.backend
    session.params.zero_grad()
    output = session.model.forward(session.params.tensors, {"x": backend.asarray(x)}, ForwardContext(backend, training=True))[0]
    loss = session.heads[0].loss(output, backend.asarray(y))
    backward(loss)
    return backend.to_host(output.value), float(loss.value)


GRAPH_KINDS = ["mlp", "two_tower", "add"]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", GRAPH_KINDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss,options,out_activation", LOSS_CASES, ids=lambda v: str(v))
def test_forward_loss_and_gradients(make_session, backend, kind, seed, loss, options, out_activation, reduction):
    session, model, rng, n_features, units = _setup(make_session, kind, seed, loss, options, out_activation, reduction, backend=backend)
    x = rng.standard_normal((BATCH, n_features))
    y, y_torch = _targets(rng, loss, units)

    output, loss_value = _nnctl_step(session, x, y)

    torch_output = model(torch.from_numpy(x.copy()))
    if not options.get("from_logits") and "crossentropy" in loss:
        p = torch_output.detach().numpy()
        if loss != "binary_crossentropy":
            p = p / p.sum(-1, keepdims=True)
        assert ((p > 1e-7) & (p < 1 - 1e-7)).all(), "probabilities where nnctl clips: pick another seed"
    per_sample = _torch_per_sample(loss, options, torch_output, y_torch)
    torch_loss = per_sample.sum() if reduction == "sum" else per_sample.mean()
    torch_loss.backward()

    np.testing.assert_allclose(output, torch_output.detach().numpy(), **TOL)
    np.testing.assert_allclose(loss_value, torch_loss.item(), **TOL)
    expected = model.grads()
    assert set(expected) == set(session.params.grad_views)
    for key, grad in session.params.grad_views.items():
        np.testing.assert_allclose(backend.to_host(grad), expected[key], **TOL, err_msg=key)


def test_graphs_use_every_hidden_activation():
    seen = set()
    for kind in GRAPH_KINDS:
        for seed in range(3):
            for layer in random_graph(kind, seed, 2, "linear")[1][:-1]:
                if layer["type"] == "dense":
                    a = layer["activation"]
                    seen.add(a if isinstance(a, str) else a["type"])
    assert len(seen) >= 6, seen


# --- optimizers ----------------------------------------------------------------------------------
# (nnctl optimizer spec, torch optimizer class name, torch kwargs)
OPTIMIZER_CASES = {
    "sgd": ({"type": "sgd", "learning_rate": 0.1}, "SGD", {"lr": 0.1}),
    "sgd-momentum": ({"type": "sgd", "learning_rate": 0.05, "momentum": 0.9}, "SGD", {"lr": 0.05, "momentum": 0.9}),
    "sgd-nesterov": (
        {"type": "sgd", "learning_rate": 0.05, "momentum": 0.8, "nesterov": True},
        "SGD", {"lr": 0.05, "momentum": 0.8, "nesterov": True},
    ),
    "adam": (
        {"type": "adam", "learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.95, "epsilon": 1e-6},
        "Adam", {"lr": 0.01, "betas": (0.8, 0.95), "eps": 1e-6},
    ),
    "adamw": (
        {"type": "adamw", "learning_rate": 0.01, "beta_1": 0.85, "beta_2": 0.99, "epsilon": 1e-6, "weight_decay": 0.05},
        "AdamW", {"lr": 0.01, "betas": (0.85, 0.99), "eps": 1e-6, "weight_decay": 0.05},
    ),
    "rmsprop": (
        {"type": "rmsprop", "learning_rate": 0.01, "rho": 0.8, "epsilon": 1e-6},
        "RMSprop", {"lr": 0.01, "alpha": 0.8, "eps": 1e-6},
    ),
    "adagrad": (
        {"type": "adagrad", "learning_rate": 0.1, "initial_accumulator_value": 0.2, "epsilon": 1e-6},
        "Adagrad", {"lr": 0.1, "initial_accumulator_value": 0.2, "eps": 1e-6},
    ),
    # nnctl's (Keras') defaults, spelled out for torch.
    "sgd-defaults": ("sgd", "SGD", {"lr": 0.01}),
    "adam-defaults": ("adam", "Adam", {"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-7}),
    "adamw-defaults": ("adamw", "AdamW", {"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-7, "weight_decay": 0.004}),
    "rmsprop-defaults": ("rmsprop", "RMSprop", {"lr": 0.001, "alpha": 0.9, "eps": 1e-7}),
    "adagrad-defaults": ("adagrad", "Adagrad", {"lr": 0.001, "initial_accumulator_value": 0.1, "eps": 1e-7}),
}
STEPS = 5


@pytest.mark.parametrize("kind,loss,options,out_activation", [
    ("mlp", "mse", {}, "linear"),
    ("two_tower", "sparse_categorical_crossentropy", {"from_logits": True}, "linear"),
    ("add", "binary_crossentropy", {}, "sigmoid"),
])
@pytest.mark.parametrize("name", list(OPTIMIZER_CASES))
def test_optimizer_steps(make_session, backend, name, kind, loss, options, out_activation):
    nnctl_optimizer, torch_class, torch_kwargs = OPTIMIZER_CASES[name]
    session, model, rng, n_features, units = _setup(
        make_session, kind, 4, loss, options, out_activation, optimizer=nnctl_optimizer, backend=backend
    )
    optimizer = session.make_optimizer()
    torch_optimizer = getattr(torch.optim, torch_class)(model.parameters(), **torch_kwargs)
    for step in range(STEPS):
        x = rng.standard_normal((BATCH, n_features))
        y, y_torch = _targets(rng, loss, units)

        _, loss_value = _nnctl_step(session, x, y)
        optimizer.step(session.params.flat, session.params.grad_flat)

        torch_optimizer.zero_grad()
        torch_loss = _torch_per_sample(loss, options, model(torch.from_numpy(x.copy())), y_torch).mean()
        torch_loss.backward()
        torch_optimizer.step()

        np.testing.assert_allclose(loss_value, torch_loss.item(), **TOL, err_msg=f"step {step + 1}")
        expected = model.weights()
        for key, value in session.params.to_host().items():
            np.testing.assert_allclose(value, expected[key], **TOL, err_msg=f"{key} after step {step + 1}")
    assert optimizer.iterations == STEPS
    start = TorchGraph(model.layers, session.model.initial_weights(session.spec.seed)).weights()
    assert any(not np.allclose(start[k], v, rtol=0, atol=1e-6) for k, v in model.weights().items()), "no step was taken"
