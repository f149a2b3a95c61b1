"""The backprop walkthrough of `nnctl gradcheck --explain`, for one sample (article 003's example).

Every named node of the graph (inputs, pre-activations z, layer outputs a) gets its value, dL/dnode
by reverse mode and by central differences, and every weight dL/dW both ways. Where the textbook
derivation applies — dense layers with a sigmoid activation under half_squared_error,
L = 0.5 * sum((a - y)^2) — the hand-derived formulas are evaluated too:

    output layer:  dL/da = a - y
    any layer:     dL/dz = dL/da * a(1 - a)          (sigmoid' written with its output)
    hidden layer:  dL/da = dL/dz_next @ W_next^T     (summed over the layers it feeds)
    weights:       dL/dW = a_prev^T @ dL/dz,  dL/db = dL/dz

No printing: `explain` returns plain data that nnctl.cli.report renders.
"""
from __future__ import annotations

import numpy

from nnctl.diagnostics.numeric import Probe
from nnctl.train.heads import loss_names

PREACTIVATION = "/preactivation"


def _is_sigmoid_dense(node) -> bool:
    layer = node.layer
    return layer.type_name == "dense" and layer.config["activation"].name == "sigmoid"


def _forward_text(node, symbols) -> str:
    layer = node.layer
    sources = ", ".join(symbols[name] for name in node.inputs)
    if layer.type_name == "dense":
        k = symbols[node.name][1:]
        bias = f" + b{k}" if layer.config["use_bias"] else ""
        return f"{sources} · W{k}{bias}"
    return f"{layer.type_name}({sources})"


def explain(session, inputs: dict, targets, eps: float = 1e-6, rtol: float = 1e-4, atol: float = 1e-6, max_elements: int = 1000) -> dict:
    """The walkthrough for the one sample in `inputs`/`targets` (batch axis of length 1), in float64."""
    backend, model, params = session.backend, session.model, session.params
    host = backend.to_host
    # One sample: its walkthrough is the inference-mode pass (batch statistics of one sample are none).
    probe = Probe(session, inputs, targets, training=False)
    inputs, targets = probe.inputs, probe.targets

    def numeric(count, derivative) -> numpy.ndarray:
        """The first `max_elements` central differences; NaN for the elements not checked."""
        out = numpy.full(count, numpy.nan)
        for i in range(min(count, max_elements)):
            out[i] = derivative(i)
        return out

    # --- symbols: a0 for a single input, z_k / a_k / W_k / b_k for the k-th layer --------------
    symbols = {name: ("a0" if len(model.input_shapes) == 1 else name) for name in model.input_shapes}
    for k, node in enumerate(model.nodes, start=1):
        symbols[node.name] = f"a{k}"
        symbols[node.name + PREACTIVATION] = f"z{k}"
    layer_of = {node.name: node for node in model.nodes}
    consumers = {name: [] for name in symbols}
    for node in model.nodes:
        for ref in node.inputs:
            consumers[ref].append(node)

    # --- hand-derived gradients, walking back from the output ----------------------------------
    # The textbook formulas hold for the plain loss: not with a regularization penalty added.
    # They are written for one output.
    outputs = session.spec.outputs
    textbook = len(outputs) == 1 and outputs[0].loss.name == "half_squared_error" and not getattr(session, "regularized", None)
    value = {name: host(t.value).astype(numpy.float64) for name, t in probe.nodes.items()}
    y = {name: host(t).astype(numpy.float64) for name, t in targets.items()}
    dL_da, dL_dz, formula_text = {}, {}, {}
    if textbook:
        for node in reversed(model.nodes):
            a = value[node.name]
            if node.name in y:
                dL_da[node.name] = a - y[node.name]
                formula_text[node.name] = f"{symbols[node.name]} - y"
            elif consumers[node.name] and all(c.name in dL_dz for c in consumers[node.name]):
                dL_da[node.name] = sum(dL_dz[c.name] @ host(params.views[f"{c.name}/kernel"]).T for c in consumers[node.name])
                formula_text[node.name] = " + ".join(f"dL/dz{symbols[c.name][1:]} · W{symbols[c.name][1:]}ᵀ" for c in consumers[node.name])
            if node.name in dL_da and _is_sigmoid_dense(node):
                dL_dz[node.name] = dL_da[node.name] * a * (1 - a)
                formula_text[node.name + PREACTIVATION] = f"dL/d{symbols[node.name]} ⊙ {symbols[node.name]}(1 - {symbols[node.name]})"
        for name in model.input_shapes:
            if consumers[name] and all(c.name in dL_dz for c in consumers[name]):
                dL_da[name] = sum(dL_dz[c.name] @ host(params.views[f"{c.name}/kernel"]).T for c in consumers[name])
                formula_text[name] = " + ".join(f"dL/dz{symbols[c.name][1:]} · W{symbols[c.name][1:]}ᵀ" for c in consumers[name])
    formula = {**dL_da, **{name + PREACTIVATION: g for name, g in dL_dz.items()}}

    def compare(autograd, numeric_values, hand):
        checked = ~numpy.isnan(numeric_values)
        abs_err = numpy.abs(autograd - numeric_values)[checked]
        ok = bool(numpy.all(abs_err <= atol + rtol * numpy.abs(numeric_values[checked])))
        formula_err = None
        if hand is not None:
            formula_err = float(numpy.abs(autograd - hand).max(initial=0))
            ok = ok and bool(numpy.all(numpy.abs(autograd - hand) <= atol + rtol * numpy.abs(hand)))
        return float(abs_err.max(initial=0)), formula_err, ok

    nodes = []
    for name in probe.nodes:
        auto = host(probe.node_gradient(name)).astype(numpy.float64).reshape(-1)
        fd = numeric(auto.size, lambda i, name=name: probe.node_derivative(name, i, eps))
        hand = formula.get(name)
        hand = None if hand is None else numpy.asarray(hand, dtype=numpy.float64).reshape(-1)
        max_err, formula_err, ok = compare(auto, fd, hand)
        if name in model.input_shapes:
            forward = "input"
        elif name.endswith(PREACTIVATION):
            forward = _forward_text(layer_of[name[: -len(PREACTIVATION)]], symbols)
        else:
            node = layer_of[name]
            activation = node.layer.config["activation"].name if node.layer.type_name == "dense" else None
            if activation and activation != "linear":
                forward = f"{activation}({symbols[name + PREACTIVATION]})"
            else:
                forward = _forward_text(node, symbols)
        nodes.append({
            "name": name, "symbol": symbols.get(name, name), "forward": forward,
            "value": value[name].reshape(-1).tolist(), "autograd": auto.tolist(), "numeric": fd.tolist(),
            "formula": None if hand is None else hand.tolist(), "formula_text": formula_text.get(name),
            "max_abs_error": max_err, "max_formula_error": formula_err, "passed": ok,
        })

    weights = []
    for key, grad in params.grad_views.items():
        view = params.views[key]
        layer_name, weight_name = key.rsplit("/", 1)
        k = symbols[layer_name][1:]
        auto = host(grad).astype(numpy.float64).reshape(-1)
        fd = numeric(auto.size, lambda i, key=key: probe.weight_derivative(key, i, eps))
        hand, text = None, None
        if layer_name in dL_dz:
            source = layer_of[layer_name].inputs[0]
            if weight_name == "kernel":
                hand = (value[source].T @ dL_dz[layer_name]).reshape(-1)
                text = f"{symbols[source]}ᵀ · dL/dz{k}"
            elif weight_name == "bias":
                hand = dL_dz[layer_name].sum(axis=0).reshape(-1)
                text = f"dL/dz{k}"
        max_err, formula_err, ok = compare(auto, fd, hand)
        weights.append({
            "name": key, "symbol": f"{'W' if weight_name == 'kernel' else 'b' if weight_name == 'bias' else weight_name}{k}",
            "shape": list(view.shape), "value": host(view).astype(numpy.float64).reshape(-1).tolist(),
            "autograd": auto.tolist(), "numeric": fd.tolist(), "formula": None if hand is None else hand.tolist(),
            "formula_text": text, "max_abs_error": max_err, "max_formula_error": formula_err, "passed": ok,
        })

    return {
        "name": session.spec.name,
        "loss_name": loss_names(outputs),
        "textbook": textbook,
        "loss": probe.loss,
        "inputs": {k: host(v).reshape(-1).tolist() for k, v in inputs.items()},
        # One output's targets as a list, several outputs' by name.
        "targets": y[outputs[0].name].reshape(-1).tolist() if len(outputs) == 1 else {k: v.reshape(-1).tolist() for k, v in y.items()},
        "eps": eps, "rtol": rtol, "atol": atol,
        "nodes": nodes,
        "weights": weights,
        "passed": all(n["passed"] for n in nodes) and all(w["passed"] for w in weights),
    }
