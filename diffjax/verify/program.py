"""The model's own traced program, as a list of relaxable operations.

:func:`trace` runs ``jax.make_jaxpr`` on the function to verify and interprets the jaxpr with one
rule per primitive:

* sub-programs (``pjit``, ``custom_jvp_call``, ``custom_vjp_call``, ``checkpoint``) are inlined,
  except a ``custom_jvp_call`` whose body is exact GELU (diffjax's :func:`diffjax.vit.gelu`,
  recognised by its primitives and checked against x·Φ(x) on a grid), which is one GELU;
* an equation whose inputs are all constant (parameters: positional embeddings, DA's λ, …) is
  evaluated: at once where its inputs are concrete, on the caller's trace where they are
  traced (the model's parameters inside a training step's ``jit``/``grad``);
* the softmax that ``jax.nn.softmax`` writes out (exp(z − s) / Σ exp(z − s) with a shift s
  constant along the axis) is recognised from its equations and replaced by the direct form
  softmax_i = 1 / Σ_j exp(z_j − z_i): the pairwise differences (a linear map, kept for their
  bounds), the denominators (:class:`~diffjax.verify.ops.SumExpDiff`, which reads those bounds)
  and a reciprocal, so that the noise shared by the logits of a row cancels;
* every other primitive maps to a relaxation of :mod:`diffjax.verify.ops`, or is refused with
  a ValueError naming the primitive and the line of the model it comes from.

The result is a :class:`Program`: variable 0 is the input, every :class:`Node` computes one
variable from perturbed variables (constants are closed over).

The constants stay JAX values, never NumPy copies: traced inside ``jax.jit``/``jax.grad`` of a
function of the parameters, the program closes over the parameters' tracers and its bounds are
differentiable in them (certified training, :mod:`diffjax.train`). So recognising a structure
never reads a traced constant's value: a constant is compared with another by being the same
jaxpr variable, or by value only where both are concrete (literals).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core

from diffjax.verify import ops

# Primitives affine in their perturbed operands (for mul/dot_general/div: with one perturbed
# operand, the multiplier or divisor constant).
STRUCTURAL = {
    "add", "add_any", "sub", "neg", "reshape", "transpose", "broadcast_in_dim", "reduce_sum",
    "concatenate", "slice", "pad", "squeeze", "expand_dims", "convert_element_type", "copy",
    "copy_p", "stop_gradient",
}  # fmt: skip
CALLS = ("pjit", "jit", "closed_call", "core_call", "checkpoint", "remat", "remat2",
         "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr")  # fmt: skip
UNARY = {"exp": ops.Exp, "rsqrt": ops.Rsqrt, "square": ops.Square, "tanh": ops.Tanh,
         "logistic": ops.Logistic, "erf": ops.Erf}  # fmt: skip
# The longest contraction that the rounding slack DELTA covers (ops.base).
MAX_CONTRACTION = 2**12


@dataclasses.dataclass(frozen=True)
class Node:
    """``out`` = op(*ins): ``ins`` and ``out`` are variable ids, ``where`` the model's line;
    ``reads``: more variables whose bounds the op's relaxation uses (softmax's pairwise
    differences), through which no coefficient flows."""

    op: ops.Op
    ins: tuple[int, ...]
    out: int
    where: str
    reads: tuple[int, ...] = ()  # variables whose bounds the op reads without depending on them


@dataclasses.dataclass(frozen=True)
class Program:
    """Nodes in topological order; ``shapes[v]`` of each variable; variable 0 is the input.

    ``pairdiff`` maps the variables that are softmax's pairwise differences z_j − z_i to
    (z, softmax axis): their bounds come from the logits' linear bounds. ``interval_only`` are
    the softmax's denominators and outputs, bounded by intervals from the differences' bounds
    (a backward pass from them would carry a [rows, N³]-sized coefficient per head).
    ``contraction`` is the longest sum of products in the program (for the rounding slack).
    """

    nodes: tuple[Node, ...]
    shapes: dict[int, tuple[int, ...]]
    output: int
    pairdiff: dict[int, tuple[int, int]]
    interval_only: frozenset[int]
    contraction: int

    def producer(self, var: int) -> int:
        for i, node in enumerate(self.nodes):
            if node.out == var:
                return i
        raise KeyError(var)


def _where(eqn) -> str:
    try:
        from jax._src import source_info_util

        return source_info_util.summarize(eqn.source_info)
    except Exception:  # noqa: BLE001 - only for the message
        return "?"


def refuse(prim: str, where: str, why: str = "") -> ValueError:
    reason = why or "no relaxation is implemented for it"
    return ValueError(
        f"diffjax.verify cannot bound primitive {prim!r} (from {where}): {reason}; "
        "the model uses an operation the verifier does not model, so it refuses to certify it"
    )


@dataclasses.dataclass
class _Raw:
    prim: str
    ins: list  # ("v", id) or ("c", array)
    out: int
    params: dict
    where: str
    eqn: Any = None


def _sub_jaxpr(eqn):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if sub is not None:
            if isinstance(sub, core.ClosedJaxpr):
                return sub.jaxpr, list(sub.consts)
            return sub, []
    raise refuse(eqn.primitive.name, _where(eqn), "its body could not be found")


def _concrete(value) -> bool:
    """Whether a constant has a value now (not a tracer of the caller's jit/grad)."""
    return not isinstance(value, jax.core.Tracer)


def _equals(value, target) -> bool:
    """A concrete constant equal to ``target`` everywhere; a traced one never is."""
    return _concrete(value) and bool(np.all(np.asarray(value) == target))


def _same_const(a, b) -> bool:
    """The same constant: the same jaxpr variable's value, or two equal concrete values."""
    if a is b:
        return True
    return _concrete(a) and _concrete(b) and np.array_equal(np.asarray(a), np.asarray(b))


def _is_gelu(eqn) -> bool:
    """A one-input custom_jvp_call whose body is erf arithmetic computing x·Φ(x)."""
    body, consts = _sub_jaxpr(eqn)
    prims = {e.primitive.name for e in body.eqns}
    if len(body.invars) != 1 or len(body.outvars) != 1 or "erf" not in prims:
        return False
    if not prims <= {"mul", "erf", "add", "div", "convert_element_type"}:
        return False
    if not all(map(_concrete, consts)):
        return False
    # On the grid in the body's own dtype (a float32 model's, in training), to its precision.
    dtype = body.invars[0].aval.dtype
    eps = float(np.finfo(dtype).eps)
    with jax.ensure_compile_time_eval(), jax.enable_x64():
        x = jnp.linspace(-8.0, 8.0, 1601, dtype=dtype)
        (y,) = core.jaxpr_as_fun(core.ClosedJaxpr(body, consts))(x)
        want = ops.Gelu().f(x.astype(jnp.float64))
    return bool(np.allclose(np.asarray(y, np.float64), np.asarray(want), rtol=1e4 * eps,
                            atol=1e2 * eps))  # fmt: skip


class _Tracer:
    """Flattens a closed jaxpr into _Raw equations on perturbed variables."""

    def __init__(self):
        self.raw: list[_Raw] = []
        self.shapes: dict[int, tuple[int, ...]] = {}
        self.dtypes: dict[int, Any] = {}
        self.count = 0

    def new(self, aval) -> int:
        self.count += 1
        self.shapes[self.count] = tuple(aval.shape)
        self.dtypes[self.count] = aval.dtype
        return self.count

    def run(self, jaxpr, consts, args) -> list:
        env = {}
        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[v] = ("c", c)
        for v, a in zip(jaxpr.invars, args, strict=True):
            env[v] = a

        def read(v):
            return ("c", np.asarray(v.val)) if isinstance(v, core.Literal) else env[v]

        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            perturbed = any(kind == "v" for kind, _ in ins)
            if name == "custom_jvp_call" and perturbed and _is_gelu(eqn):
                out = self.new(eqn.outvars[0].aval)
                self.raw.append(_Raw("gelu", ins, out, {}, _where(eqn)))
                env[eqn.outvars[0]] = ("v", out)
                continue
            if name in CALLS:
                body, sub_consts = _sub_jaxpr(eqn)
                n_consts = eqn.params.get("num_consts", 0) if name == "custom_vjp_call" else 0
                outs = self.run(body, sub_consts, ins[n_consts:] if n_consts else ins)
                for v, o in zip(eqn.outvars, outs, strict=True):
                    env[v] = o
                continue
            if not perturbed:
                vals = _evaluate(eqn, [c for _, c in ins])
                for v, val in zip(eqn.outvars, vals, strict=True):
                    env[v] = ("c", val)
                continue
            if len(eqn.outvars) != 1:
                raise refuse(name, _where(eqn), "it has several results")
            out = self.new(eqn.outvars[0].aval)
            self.raw.append(_Raw(name, ins, out, dict(eqn.params), _where(eqn), eqn))
            env[eqn.outvars[0]] = ("v", out)
        return [read(v) for v in jaxpr.outvars]


def _evaluate(eqn, args) -> list:
    """The results of an equation on constants: concrete where every input is, else traced
    on the caller's trace (inside a jit, concrete inputs would otherwise be staged out too)."""
    if all(map(_concrete, args)):
        with jax.ensure_compile_time_eval():
            vals = eqn.primitive.bind(*args, **eqn.params)
    else:
        vals = eqn.primitive.bind(*args, **eqn.params)
    return vals if eqn.primitive.multiple_results else [vals]


def _shape(ref, shapes):
    kind, val = ref
    return shapes[val] if kind == "v" else np.shape(val)


def _find_softmax(raw: list[_Raw], shapes) -> dict[int, tuple[int, int]]:
    """{index of the div: (logits var, axis)} for every written-out softmax."""
    prod = {r.out: r for r in raw}
    found = {}
    for i, r in enumerate(raw):
        if r.prim != "div" or any(k != "v" for k, _ in r.ins):
            continue
        (_, e), (_, den) = r.ins
        ex = prod.get(e)
        if ex is None or ex.prim != "exp" or ex.ins[0][0] != "v":
            continue
        sub = prod.get(ex.ins[0][1])
        if sub is None or sub.prim != "sub" or sub.ins[0][0] != "v":
            continue
        z = sub.ins[0][1]
        node = prod.get(den)
        while node is not None and node.prim in ("broadcast_in_dim", "reshape"):
            node = prod.get(node.ins[0][1]) if node.ins[0][0] == "v" else None
        if node is None or node.prim != "reduce_sum" or node.ins[0] != ("v", e):
            continue
        axes = tuple(node.params["axes"])
        zshape = shapes[z]
        if len(axes) != 1 or shapes[den] != zshape[: axes[0]] + (1,) + zshape[axes[0] + 1 :]:
            continue
        shift = _shape(sub.ins[1], shapes)
        # The shift must be constant along the axis (size 1 there) for exp(z − s)/Σ to be
        # softmax(z) exactly.
        full = (1,) * (len(zshape) - len(shift)) + tuple(shift)
        if full[axes[0]] != 1 or shapes[e] != zshape:
            continue
        found[i] = (z, axes[0])
    return found


def _find_shifts(raw: list[_Raw], shapes) -> dict[int, tuple[int, int]]:
    """{index of the stop_gradient: (z, axis)} for every shift s = stop_gradient(max_j z_j)
    (through ``max(−inf, ·)``, reshapes and broadcasts) whose every use is exp(z − s).

    jax.nn.softmax subtracts this s for range only: its value and its JVP are quotients of
    sums homogeneous of degree 0 in exp(−s) (exp(z − s)/Σ exp(z − s), and the tangent's
    t·e/Σe − (Σ t·e)·e/(Σe)²), so any per-row s gives the same function. Where the program
    still reads s (the JVP, whose tangent is written with exp(z − s), not with the softmax the
    direct form replaces), the verifier takes s = mean_j z_j instead: z − s is then linear in
    z and its bounds cancel the noise shared by the row, as the pairwise differences do.
    """
    prod = {r.out: r for r in raw}
    uses: dict[int, list[_Raw]] = {}
    for r in raw:
        for k, v in r.ins:
            if k == "v":
                uses.setdefault(v, []).append(r)
    found = {}
    for i, r in enumerate(raw):
        if r.prim != "stop_gradient" or r.ins[0][0] != "v":
            continue
        node = prod.get(r.ins[0][1])
        while node is not None and (
            node.prim in ("broadcast_in_dim", "reshape")
            or (node.prim == "max" and any(k == "c" and _equals(v, -np.inf)
                                           for k, v in node.ins))
        ):  # fmt: skip
            pert = [v for k, v in node.ins if k == "v"]
            node = prod.get(pert[0]) if len(pert) == 1 else None
        if node is None or node.prim != "reduce_max" or len(node.params["axes"]) != 1:
            continue
        z, axis = node.ins[0][1], node.params["axes"][0]
        subs = uses.get(r.out, [])
        ok = all(u.prim == "sub" and u.ins == [("v", z), ("v", r.out)]
                 and all(e.prim == "exp" for e in uses.get(u.out, [])) for u in subs)  # fmt: skip
        zshape = shapes[z]
        keep = zshape[:axis] + (1,) + zshape[axis + 1 :]
        if ok and subs and len(shapes[r.out]) == len(zshape) and shapes[r.out] == keep:
            found[i] = (z, axis)
    return found


def _bind(prim, params):
    def call(*args):
        return prim.bind(*args, **params)

    return call


def _linear_fns(r: _Raw, dtype) -> tuple[Callable, Callable, list]:
    """fn(*perturbed), fn_abs(*perturbed) and the perturbed operand positions of an affine eqn."""
    prim = r.eqn.primitive
    params = dict(r.params)
    if r.prim == "convert_element_type":
        params["new_dtype"] = dtype
    if r.prim == "dot_general" and params.get("preferred_element_type") is not None:
        params["preferred_element_type"] = dtype
    call = _bind(prim, params)
    if r.prim in ("sub", "neg"):
        call_abs = _bind(lax.add_p, {}) if r.prim == "sub" else (lambda x: x)
    else:
        call_abs = call
    slots = [i for i, (k, _) in enumerate(r.ins) if k == "v"]
    consts = {i: jnp.asarray(v, dtype) for i, (k, v) in enumerate(r.ins) if k == "c"}
    abs_consts = {i: jnp.abs(v) for i, v in consts.items()}

    def make(fn, cs):
        def apply(*pert):
            args = [None] * len(r.ins)
            for i, p in zip(slots, pert, strict=True):
                args[i] = p
            for i, c in cs.items():
                args[i] = c
            return fn(*args)

        return apply

    return make(call, consts), make(call_abs, abs_consts), slots


def _contraction(r: _Raw, shapes) -> int:
    if r.prim == "dot_general":
        (contract, _), _ = r.params["dimension_numbers"]
        shape = _shape(r.ins[0], shapes)
        return math.prod(shape[a] for a in contract)
    if r.prim == "reduce_sum":
        shape = _shape(r.ins[0], shapes)
        return math.prod(shape[a] for a in r.params["axes"])
    return 1


def trace(fn: Callable, example, dtype=jnp.float64) -> Program:
    """The :class:`Program` of ``fn`` (one array in, one array out) traced at ``example``.

    ``dtype`` is the dtype the bounds are computed in (constants are cast to it). Raises a
    ValueError naming the primitive for anything it cannot bound.
    """
    closed = jax.make_jaxpr(fn)(example)
    tracer = _Tracer()
    tracer.shapes[0] = tuple(np.shape(example))
    tracer.dtypes[0] = jnp.asarray(example).dtype
    (out,) = tracer.run(closed.jaxpr, closed.consts, [("v", 0)])
    if out[0] != "v":
        raise ValueError("the function to verify does not depend on its input")
    raw, shapes = tracer.raw, tracer.shapes
    softmax = _find_softmax(raw, shapes)
    shifts = _find_shifts(raw, shapes)
    # Dead-code elimination from the output (the softmax's shift and sum die with it).
    live, needed = [], {out[1]}
    for i in reversed(range(len(raw))):
        r = raw[i]
        if r.out not in needed:
            continue
        live.append(i)
        if i in softmax or i in shifts:
            needed.add((softmax.get(i) or shifts[i])[0])
        else:
            needed.update(v for k, v in r.ins if k == "v")
    builder = _Builder(tracer, dtype)
    for i in reversed(live):
        if i in softmax:
            builder.softmax(raw[i], *softmax[i])
        elif i in shifts:
            z, axis = shifts[i]
            mean = ops.Linear(lambda x, a=axis: jnp.mean(x, a, keepdims=True),
                              lambda x, a=axis: jnp.mean(x, a, keepdims=True),
                              [builder.zeros(z)])  # fmt: skip
            builder.emit(mean, [z], raw[i].out, raw[i].where)
        else:
            builder.add(raw[i])
    keep = {z for z, _ in builder.pairdiff.values()} | builder.interval_only
    nodes = _fuse_linear(builder.nodes, out[1], keep)
    return Program(tuple(nodes), dict(shapes), out[1], builder.pairdiff,
                   frozenset(builder.interval_only), builder.contraction)  # fmt: skip


def _compose(outer: ops.Linear, inner: ops.Linear) -> ops.Linear:
    return ops.Linear(
        lambda *x: outer.fn(inner.fn(*x)), lambda *x: outer.fn_abs(inner.fn_abs(*x)), inner.zeros
    )


def _fuse_linear(nodes: list[Node], output: int, keep: set[int]) -> list[Node]:
    """Compose chains of affine nodes: a linear node whose only perturbed input is the result
    of another linear node, used nowhere else, becomes one node (|L₂L₁| ≤ |L₂||L₁| keeps the
    absolute map an upper bound). Fewer, larger steps: the same bounds, a smaller program."""
    uses: dict[int, int] = {}
    for n in nodes:
        for v in n.ins:
            uses[v] = uses.get(v, 0) + 1
    made: dict[int, Node] = {}
    fused = []
    for n in nodes:
        if isinstance(n.op, ops.Linear) and len(n.ins) == 1 and n.ins[0] in made:
            v = n.ins[0]
            inner = made[v]
            if uses[v] == 1 and v != output and v not in keep:
                fused.remove(inner)
                n = Node(_compose(n.op, inner.op), inner.ins, n.out, n.where)
        fused.append(n)
        if isinstance(n.op, ops.Linear):
            made[n.out] = n
    return fused


class _Builder:
    def __init__(self, tracer: _Tracer, dtype):
        self.tracer, self.dtype = tracer, jnp.dtype(dtype)
        self.shapes = tracer.shapes
        self.nodes: list[Node] = []
        self.pairdiff: dict[int, tuple[int, int]] = {}
        self.interval_only: set[int] = set()
        self.contraction = 1
        self.made: dict[int, _Raw] = {}  # the raw equation of each perturbed variable

    def zeros(self, var):
        return jnp.zeros(self.shapes[var], self.dtype)

    def fresh(self, shape) -> int:
        self.tracer.count += 1
        self.shapes[self.tracer.count] = tuple(shape)
        return self.tracer.count

    def emit(self, op, ins, out, where, reads=()):
        self.nodes.append(Node(op, tuple(ins), out, where, tuple(reads)))

    def _max_step(self, r: _Raw) -> tuple[ops.Step, int] | None:
        """eq(x, max(x, c)) ⇔ x ≥ c, eq(c, max(x, c)) ⇔ x ≤ c (the JVP of max): (step, x)."""
        for m, other in (r.ins, r.ins[::-1]):
            made = self.made.get(m[1]) if m[0] == "v" else None
            if made is None or made.prim != "max":
                continue
            x = [v for k, v in made.ins if k == "v"]
            c = [v for k, v in made.ins if k == "c"]
            if len(x) != 1 or len(c) != 1:
                continue
            if other == ("v", x[0]):
                return ops.Step(jnp.asarray(c[0], self.dtype), above=True), x[0]
            if other[0] == "c" and _same_const(other[1], c[0]):
                return ops.Step(jnp.asarray(c[0], self.dtype), above=False), x[0]
        return None

    def add(self, r: _Raw):
        self.made[r.out] = r
        pert = [v for k, v in r.ins if k == "v"]
        consts = [v for k, v in r.ins if k == "c"]
        self.contraction = max(self.contraction, _contraction(r, self.shapes))
        if r.prim == "gelu":
            return self.emit(ops.Gelu(), pert, r.out, r.where)
        if r.prim == "convert_element_type":
            src = self.tracer.dtypes[pert[0]]
            if jnp.dtype(r.params["new_dtype"]) != src:
                why = f"it converts a perturbed {src} value to {r.params['new_dtype']}"
                raise refuse(r.prim, r.where, why + " (the model must compute in float64)")
        if r.prim == "eq" and (step := self._max_step(r)) is not None:
            return self.emit(step[0], [step[1]], r.out, r.where)
        if r.prim == "select_n" and len(r.ins) == 3 and r.ins[0][0] == "v" and not pert[1:]:
            # A 0/1 predicate choosing between constants: a + p·(b − a).
            a, b = (jnp.asarray(v, self.dtype) for _, v in r.ins[1:])
            lin = ops.Linear(lambda p: a + p * (b - a), lambda p: jnp.abs(a) + jnp.abs(b - a) * p,
                             [self.zeros(pert[0])])  # fmt: skip
            return self.emit(lin, pert, r.out, r.where)
        if r.prim in UNARY:
            return self.emit(UNARY[r.prim](), pert, r.out, r.where)
        if r.prim == "integer_pow" and r.params["y"] in (2, -1, -2):
            op = {2: ops.Square, -1: ops.Reciprocal, -2: ops.InverseSquare}[r.params["y"]]()
            return self.emit(op, pert, r.out, r.where)
        if r.prim == "max" and len(pert) == 1:
            return self.emit(ops.MaxConst(jnp.asarray(consts[0], self.dtype)), pert, r.out,
                             r.where)  # fmt: skip
        if r.prim in ("mul", "dot_general") and len(pert) == 2:
            if r.prim == "mul" and pert[0] == pert[1]:
                return self.emit(ops.Square(), pert[:1], r.out, r.where)
            params = dict(r.params)
            if params.get("preferred_element_type") is not None:
                params["preferred_element_type"] = self.dtype
            return self.emit(ops.Bilinear(_bind(r.eqn.primitive, params)), pert, r.out, r.where)
        if r.prim == "div" and r.ins[1][0] == "v":
            # x / y = x · (1/y): a reciprocal, then a product.
            inv = self.fresh(self.shapes[r.ins[1][1]])
            self.emit(ops.Reciprocal(), [r.ins[1][1]], inv, r.where)
            if r.ins[0][0] == "v":
                fn = jnp.multiply
                return self.emit(ops.Bilinear(fn), [r.ins[0][1], inv], r.out, r.where)
            num = jnp.asarray(r.ins[0][1], self.dtype)
            lin = ops.Linear(lambda y: num * y, lambda y: jnp.abs(num) * y, [self.zeros(inv)])
            return self.emit(lin, [inv], r.out, r.where)
        if r.prim in STRUCTURAL or (r.prim in ("mul", "dot_general", "div") and len(pert) == 1):
            fn, fn_abs, _ = _linear_fns(r, self.dtype)
            zeros = [self.zeros(v) for v in pert]
            return self.emit(ops.Linear(fn, fn_abs, zeros), pert, r.out, r.where)
        raise refuse(r.prim, r.where)

    def softmax(self, r: _Raw, z: int, axis: int):
        """softmax(z) along ``axis`` as 1 / Σ_j exp(z_j − z_i)."""
        shape = self.shapes[z]
        n = shape[axis]
        moved = tuple(np.delete(shape, axis)) + (n,)

        def pairdiff(x):  # [..., i, j] = x_j − x_i, the softmax axis moved last
            x = jnp.moveaxis(x, axis, -1)
            return x[..., None, :] - x[..., :, None]

        def pairsum(x):
            x = jnp.moveaxis(x, axis, -1)
            return x[..., None, :] + x[..., :, None]

        t = self.fresh(moved + (n,))
        self.emit(ops.Linear(pairdiff, pairsum, [self.zeros(z)]), [z], t, r.where)
        self.pairdiff[t] = (z, axis)
        s = self.fresh(moved)
        self.contraction = max(self.contraction, n)
        self.emit(ops.SumExpDiff(axis, self.zeros(t)), [z], s, r.where, reads=[t])
        inv = self.fresh(moved)
        self.emit(ops.Reciprocal(), [s], inv, r.where)
        back = ops.Linear(lambda x: jnp.moveaxis(x, -1, axis), lambda x: jnp.moveaxis(x, -1, axis),
                          [self.zeros(inv)])  # fmt: skip
        self.emit(back, [inv], r.out, r.where)
        self.interval_only |= {s, inv, r.out}
