"""Reverse-mode automatic differentiation.

A `Tensor` records the primitive that made it and, for each parent that needs a gradient, a
closure computing that parent's vector-Jacobian product. `backward` sorts the graph
topologically (iteratively: deep graphs never hit Python's recursion limit) and makes one reverse
sweep, summing gradients where a value feeds several consumers.

Primitives are registered in one table (`PRIMITIVES`, filled by nnctl.core.ops): a forward function
and one VJP per differentiable argument, in the style of HIPS autograd. Composite functions are
written with primitives and need no VJP of their own.
"""
from __future__ import annotations

from nnctl.core.backend import namespace_of

PRIMITIVES: dict[str, "Primitive"] = {}


class Tensor:
    """A value in the graph. Leaves with requires_grad are parameters (or watched inputs)."""

    __slots__ = ("value", "parents", "requires_grad", "grad", "retain_grad", "op")

    def __init__(self, value, requires_grad=False, parents=(), op=None):
        self.value = value
        self.requires_grad = requires_grad
        self.parents = parents  # [(parent, vjp_closure), ...]
        self.grad = None
        self.retain_grad = False
        self.op = op

    @property
    def shape(self):
        return self.value.shape

    @property
    def dtype(self):
        return self.value.dtype

    def __repr__(self) -> str:
        return f"Tensor(op={self.op}, shape={self.shape}, dtype={self.dtype})"

    # Operator sugar for composite functions (losses, activations); each maps to a primitive.
    def __add__(self, other):
        return PRIMITIVES["add"](self, other)

    def __sub__(self, other):
        return PRIMITIVES["subtract"](self, other)

    def __mul__(self, other):
        return PRIMITIVES["multiply"](self, other)

    def __truediv__(self, other):
        return PRIMITIVES["divide"](self, other)

    def __neg__(self):
        return PRIMITIVES["negative"](self)

    def __matmul__(self, other):
        return PRIMITIVES["matmul"](self, other)


class Primitive:
    """An op: `forward(xp, *values, **params)` and per-argument VJPs.

    `vjps[i](xp, g, ans, *values, **params)` returns dL/d(argument i) given g = dL/d(answer).
    For ops with any number of arguments (concat), `vjp_argnum(i, xp, g, ans, *values, **params)`
    serves every argument. A VJP runs only for arguments that need a gradient.
    """

    def __init__(self, name, forward, vjps=(), vjp_argnum=None):
        if name in PRIMITIVES:
            raise ValueError(f"primitive {name!r} is registered twice")
        self.name = name
        self.forward = forward
        self.vjps = tuple(vjps)
        self.vjp_argnum = vjp_argnum
        PRIMITIVES[name] = self

    def __call__(self, *args, **params):
        values = [a.value if type(a) is Tensor else a for a in args]
        xp = namespace_of(values[0])
        ans = self.forward(xp, *values, **params)
        parents = [
            (arg, self._closure(i, xp, ans, values, params))
            for i, arg in enumerate(args)
            if type(arg) is Tensor and arg.requires_grad
        ]
        if not parents:
            return Tensor(ans, op=self.name)
        return Tensor(ans, requires_grad=True, parents=parents, op=self.name)

    def _closure(self, argnum, xp, ans, values, params):
        if self.vjp_argnum is not None:
            return lambda g: self.vjp_argnum(argnum, xp, g, ans, *values, **params)
        vjp = self.vjps[argnum]
        return lambda g: vjp(xp, g, ans, *values, **params)


def unbroadcast(xp, grad, shape):
    """Undo NumPy broadcasting: sum `grad` down to `shape` (the one place this is done)."""
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad


def topological_order(root: Tensor) -> list[Tensor]:
    """Every node `root` depends on that needs a gradient, parents before children.

    An iterative depth-first post-order (tensors hash by identity), so graph depth is bounded
    by memory, not by Python's recursion limit.
    """
    order, visited = [], {root}
    stack = [(root, iter(root.parents))]
    while stack:
        node, parents = stack[-1]
        for parent, _ in parents:
            if parent not in visited:
                visited.add(parent)
                stack.append((parent, iter(parent.parents)))
                break
        else:
            stack.pop()
            order.append(node)
    return order


def backward(root: Tensor, grad=None) -> None:
    """Accumulate dL/d(leaf) into each leaf's `.grad` (and into nodes with retain_grad).

    A leaf whose `.grad` is already an array (a view into the flat gradient buffer) is
    accumulated into in place, so the optimizer sees every gradient in one buffer.
    """
    if not root.requires_grad:
        return
    if grad is None:
        grad = namespace_of(root.value).ones_like(root.value)
    pending = {root: grad}
    for node in reversed(topological_order(root)):
        g = pending.pop(node, None)
        if g is None:
            continue
        if not node.parents or node.retain_grad:
            if node.grad is None:
                node.grad = g.copy()  # g may be shared with a sibling's gradient
            else:
                node.grad += g
        for parent, vjp in node.parents:
            parent_grad = vjp(g)
            assert parent_grad.shape == parent.value.shape, (
                f"VJP of {node.op} gave shape {parent_grad.shape} for a value of shape {parent.value.shape}"
            )
            if parent in pending:
                pending[parent] = pending[parent] + parent_grad
            else:
                pending[parent] = parent_grad
