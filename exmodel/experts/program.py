"""Experts of any architecture: a ``torch.export`` graph run by exmodel's own interpreter.

A ``torch.export`` program is a declarative graph of ATen operators plus its weights; it holds the
whole architecture, so exmodel needs none of the sender's Python code. ``torch.export.load`` is not
used to read it, because in this PyTorch it is not safe on untrusted files: it unpickles weights and
constants marked ``use_pickle`` with ``torch.load(weights_only=False)`` and opaque constants with
``pickle.loads``, parses the graph's symbolic-shape expressions with sympy (``eval``) and ``exec``s
the program's ``guards_code`` when the module is built. Instead :class:`ProgramNet` walks the
graph's JSON itself: every node must call an operator of the ``aten`` namespace (or integer
arithmetic from ``_operator`` on symbolic sizes); anything else — custom operators, higher-order
operators with subgraphs, custom objects, mutations — is refused with one line before any tensor is
computed. Nothing in the JSON is ever evaluated as code: operator names are looked up in
``torch.ops.aten``, shape expressions are never parsed, guards are ignored.

BatchNorm nodes (``aten.batch_norm`` and ``aten._native_batch_norm_legit_no_training``) always run
with their running statistics (the expert is frozen) through :class:`GraphBatchNorm` modules, so the
knowledge sources that match BatchNorm statistics find them like in any other network. Dropout
nodes are the identity. ``forward_features`` returns the input of the final linear layer (the
penultimate features) when the program ends in one, else the logits.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from exmodel.errors import BundleError

PROGRAM_ARCH = "program"  # the card's ``arch`` for an expert whose network is a program
PROGRAM_FILE = "program.json"
MAX_NODES = 50_000
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Integer arithmetic on symbolic sizes (a dynamic batch dimension) and tuple indexing.
_OPERATORS = {name: getattr(operator, name) for name in (
    "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow", "eq", "ne", "lt", "le", "gt", "ge")}
# ATen operators that touch anything but tensors in memory.
_DENIED_ATEN = {"from_file", "_print", "print", "save", "load", "_debug_has_internal_overlap"}
_DROPOUT = {"dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout"}
_BATCH_NORM = {"batch_norm.default": "plain", "_native_batch_norm_legit_no_training.default": "triple"}
_HEADS = {"linear.default": 0, "addmm.default": 1}  # final op -> index of its features argument


@functools.cache
def serde_maps() -> tuple[dict[int, torch.dtype], dict[int, Any], dict[int, Any]]:
    """The export schema's integer codes of dtypes, layouts and memory formats. Read on first use:
    importing ``torch._export.serde`` costs 2.4 s, which no command that meets no program should pay."""
    from torch._export.serde import serialize as serde

    def rev(m: dict) -> dict[int, Any]:
        return {int(v): k for k, v in m.items()}

    return rev(serde._TORCH_TO_SERIALIZE_DTYPE), rev(serde._TORCH_TO_SERIALIZE_LAYOUT), \
        rev(serde._TORCH_TO_SERIALIZE_MEMORY_FORMAT)


class GraphBatchNorm(_BatchNorm):
    """A BatchNorm node of a program: always normalizes with the running statistics; any input rank."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"batch norm needs a (N, C, ...) input, got {tuple(input.shape)}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def _one(d: Any, where: str) -> tuple[str, Any]:
    if not isinstance(d, dict) or len(d) != 1:
        raise BundleError(f"{where}: malformed argument {str(d)[:80]!r}")
    return next(iter(d.items()))


def _tensor_name(d: Any, where: str) -> str:
    if not isinstance(d, dict) or not isinstance(d.get("name"), str):
        raise BundleError(f"{where}: malformed tensor reference {str(d)[:80]!r}")
    return d["name"]


class _Ref:
    """A value produced at run time, looked up by name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


DEVICE = _Ref("__device__")  # device arguments follow the input's device


def _decode(arg: Any, where: str) -> Any:
    """An argument of the export schema -> a Python value, with ``_Ref`` for run-time values."""
    kind, v = _one(arg, where)
    if kind == "as_none":
        return None
    if kind == "as_tensor":
        return _Ref(_tensor_name(v, where))
    if kind == "as_tensors":
        return [_Ref(_tensor_name(t, where)) for t in _list(v, where)]
    if kind == "as_optional_tensors":
        return [_decode(t, where) for t in _list(v, where)]
    if kind in ("as_int", "as_float", "as_bool", "as_string"):
        py = {"as_int": int, "as_float": (int, float), "as_bool": bool, "as_string": str}[kind]
        if not isinstance(v, py) or (kind == "as_int" and isinstance(v, bool)):
            raise BundleError(f"{where}: {kind} holds {type(v).__name__}")
        return float(v) if kind == "as_float" else v
    if kind in ("as_ints", "as_floats", "as_bools", "as_strings"):
        return [_decode({kind[:-1]: x}, where) for x in _list(v, where)]
    if kind in ("as_sym_int", "as_sym_float", "as_sym_bool"):
        inner, value = _one(v, where)
        if inner == "as_name":
            return _Ref(str(value))
        return _decode({inner: value}, where)
    if kind in ("as_sym_ints", "as_sym_floats", "as_sym_bools"):
        return [_decode({kind[:-1]: x}, where) for x in _list(v, where)]
    if kind == "as_scalar_type":
        return _code(serde_maps()[0], v, "dtype", where)
    if kind == "as_layout":
        return _code(serde_maps()[1], v, "layout", where)
    if kind == "as_memory_format":
        return _code(serde_maps()[2], v, "memory format", where)
    if kind == "as_device":
        return DEVICE
    raise BundleError(f"{where}: arguments of kind '{kind}' are not supported (exmodel runs plain ATen graphs)")


def _list(v: Any, where: str) -> list:
    if not isinstance(v, list):
        raise BundleError(f"{where}: expected a list, got {type(v).__name__}")
    return v


def _code(table: dict[int, Any], v: Any, what: str, where: str) -> Any:
    if not isinstance(v, int) or v not in table:
        raise BundleError(f"{where}: unknown {what} code {v!r}")
    return table[v]


def _resolve(value: Any, env: dict[str, Any]) -> Any:
    if isinstance(value, _Ref):
        return env[value.name]
    if isinstance(value, list):
        return [_resolve(v, env) for v in value]
    return value


def resolve_target(target: Any, where: str) -> tuple[Callable, str]:
    """The callable behind a node's ``target`` string, or a one-line refusal."""
    if not isinstance(target, str):
        raise BundleError(f"{where}: node target is not a string")
    parts = target.split(".")
    if len(parts) == 5 and parts[:3] == ["torch", "ops", "aten"] and all(_NAME.match(p) for p in parts[3:]):
        name, overload = parts[3:]
        if name in _DENIED_ATEN:
            raise BundleError(f"{where}: the program calls {target}, which reaches outside memory; refused")
        try:
            return getattr(getattr(torch.ops.aten, name), overload), f"{name}.{overload}"
        except (AttributeError, RuntimeError):
            raise BundleError(f"{where}: {target} is not an ATen operator of this PyTorch") from None
    if len(parts) == 2 and parts[0] == "_operator" and parts[1] in _OPERATORS:
        return _OPERATORS[parts[1]], target
    raise BundleError(f"{where}: the program calls {target[:120]}, which is not an ATen operator; "
                      "exmodel runs only graphs of ATen operators (no custom or higher-order operators)")


class _Node:
    __slots__ = ("fn", "args", "kwargs", "outputs", "name", "key")

    def __init__(self, fn, args, kwargs, outputs, name, key) -> None:
        self.fn, self.args, self.kwargs, self.outputs, self.name, self.key = fn, args, kwargs, outputs, name, key


def _outputs(node: dict, where: str) -> list[tuple[str, Any]]:
    """[(kind, name or [names])] of a node's outputs; kind 'skip' for ignored ones."""
    out = []
    for o in _list(node.get("outputs", []), where):
        kind, v = _one(o, where)
        if kind == "as_tensor":
            out.append(("one", _tensor_name(v, where)))
        elif kind == "as_tensors":
            out.append(("list", [_tensor_name(t, where) for t in _list(v, where)]))
        elif kind in ("as_sym_int", "as_sym_float", "as_sym_bool"):
            inner, value = _one(v, where)
            out.append(("one", str(value)) if inner == "as_name" else ("skip", None))
        elif kind == "as_none":
            out.append(("skip", None))
        else:
            raise BundleError(f"{where}: outputs of kind '{kind}' are not supported")
    return out


def read_signature(program: Mapping[str, Any]) -> dict[str, Any]:
    """Graph-input names of the tensors (``{graph name: fqn}``), the user input and output names."""
    try:
        gm = program["graph_module"]
        sig, graph = gm["signature"], gm["graph"]
        input_specs, output_specs = sig["input_specs"], sig["output_specs"]
        nodes = graph["nodes"]
    except (KeyError, TypeError):
        raise BundleError("program: not a torch.export program (graph_module.signature/graph missing)") from None
    tensors, user = {}, []
    for spec in _list(input_specs, "program signature"):
        kind, v = _one(spec, "program signature")
        if kind in ("parameter", "buffer", "tensor_constant"):
            fqn = v.get(f"{kind}_name")
            tensors[_tensor_name(v.get("arg"), "program signature")] = fqn
        elif kind == "user_input":
            user.append(_tensor_name(_one(v.get("arg"), "program signature")[1], "program signature"))
        else:
            raise BundleError(f"program: inputs of kind '{kind}' (custom objects, tokens) are not supported")
    outs = []
    for spec in _list(output_specs, "program signature"):
        kind, v = _one(spec, "program signature")
        if kind != "user_output":
            raise BundleError(f"program: it mutates state ('{kind}'); export the model in eval mode (model.eval())")
        outs.append(_one(v.get("arg"), "program signature"))
    if len(user) != 1:
        raise BundleError(f"program: takes {len(user)} inputs; an expert takes one image tensor")
    if len(outs) != 1 or outs[0][0] != "as_tensor":
        raise BundleError(f"program: returns {len(outs)} values; an expert returns one tensor of logits")
    if not isinstance(nodes, list) or len(nodes) > MAX_NODES:
        raise BundleError(f"program: the graph must list at most {MAX_NODES} nodes")
    if any(not isinstance(f, str) for f in tensors.values()):
        raise BundleError("program: a tensor input has no name")
    meta = graph.get("tensor_values", {}).get(user[0], {})
    return {"tensors": tensors, "input": user[0], "output": _tensor_name(outs[0][1], "program signature"),
            "nodes": nodes, "input_sizes": meta.get("sizes", [])}


def input_layout(sizes: list) -> tuple[int | None, tuple[int, ...]]:
    """(static batch size or None if dynamic, the per-sample shape) from the input's ``sizes``."""
    dims = []
    for d in sizes:
        kind, v = _one(d, "program input")
        dims.append(v if kind == "as_int" and isinstance(v, int) and v > 0 else None)
    if len(dims) < 2 or any(d is None for d in dims[1:]):
        raise BundleError("program: the input must be (batch, ...) with static sizes except the batch")
    return dims[0], tuple(dims[1:])


class ProgramNet(nn.Module):
    """A validated program with its tensors, as a network: ``net(x, task_id=None) -> logits``.

    ``x`` is a normalized image batch ``(B, C, H, W)``; programs exported on flattened inputs
    ``(B, D)`` get it flattened, programs with a fixed batch size run it in chunks of that size.
    """

    arch_name = PROGRAM_ARCH

    def __init__(self, program: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.arch_kwargs: dict[str, Any] = {}
        self.program = program
        sig = read_signature(program)
        self.batch, self.sample_shape = input_layout(sig["input_sizes"])
        self._input, self._output = sig["input"], sig["output"]
        fqns = dict(sig["tensors"])
        missing = sorted(set(fqns.values()) - set(tensors))
        extra = sorted(set(tensors) - set(fqns.values()))
        if missing or extra:
            what = f"lack {missing[0]!r}" if missing else f"hold {extra[0]!r}, which the program does not use"
            raise BundleError(f"program: the weights {what}")
        self._slots: dict[str, str] = {}  # graph input name -> attribute holding the tensor
        self._fqn: dict[str, str] = {}  # attribute -> fqn
        for i, (gname, fqn) in enumerate(sorted(fqns.items(), key=lambda kv: kv[1])):
            t = tensors[fqn]
            attr = f"t{i}"
            if t.is_floating_point():
                setattr(self, attr, nn.Parameter(t, requires_grad=False))
            else:
                self.register_buffer(attr, t)
            self._slots[gname], self._fqn[attr] = attr, fqn
        self.norms = nn.ModuleList()
        self._nodes = [self._compile(n, i) for i, n in enumerate(sig["nodes"])]
        self._head = self._find_head()

    # ------------------------------------------------------------------------------------ compile
    def _compile(self, node: dict, index: int) -> _Node:
        where = f"program node {index}"
        if not isinstance(node, dict):
            raise BundleError(f"{where}: malformed node")
        fn, key = resolve_target(node.get("target"), where)
        args, kwargs = [], {}
        for inp in _list(node.get("inputs", []), where):
            if not isinstance(inp, dict) or not isinstance(inp.get("name"), str):
                raise BundleError(f"{where}: malformed input")
            value = _decode(inp.get("arg"), where)
            if inp.get("kind", 1) == 2:
                kwargs[inp["name"]] = value
            else:
                args.append(value)
        outputs = _outputs(node, where)
        op = key.split(".")[0]
        if op in _DROPOUT:
            fn, args, kwargs = (lambda x, *_, **__: x), args[:1], {}
        elif key in _BATCH_NORM:
            fn, args, kwargs = self._batch_norm(args, kwargs, key, where)
        return _Node(fn, args, kwargs, outputs, str(node.get("name", index)), key)

    def _batch_norm(self, args: list, kwargs: dict, key: str, where: str):
        names = ["input", "weight", "bias", "running_mean", "running_var"]
        values = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
        eps = (args[7] if key == "batch_norm.default" and len(args) > 7 else
               args[6] if len(args) > 6 else kwargs.get("eps", 1e-5))
        tensors = {}
        for k in names[1:]:
            ref = values.get(k)
            if ref is not None and not (isinstance(ref, _Ref) and ref.name in self._slots):
                raise BundleError(f"{where}: batch norm {k} must be a stored tensor")
            tensors[k] = getattr(self, self._slots[ref.name]) if ref is not None else None
        if tensors["running_mean"] is None or tensors["running_var"] is None:
            raise BundleError(f"{where}: batch norm without running statistics (export the model in eval mode)")
        n = tensors["running_mean"].numel()
        bn = GraphBatchNorm(n, eps=float(eps), affine=False)
        bn.running_mean, bn.running_var = tensors["running_mean"], tensors["running_var"]
        bn.weight, bn.bias = tensors["weight"], tensors["bias"]
        bn.affine = tensors["weight"] is not None
        self.norms.append(bn)
        if key == "batch_norm.default":
            return bn, [values["input"]], {}
        return (lambda x: (bn(x), x.new_empty(0), x.new_empty(0))), [values["input"]], {}

    def _find_head(self) -> tuple[int, int] | None:
        for i in range(len(self._nodes) - 1, -1, -1):
            node = self._nodes[i]
            if any(kind == "one" and name == self._output for kind, name in node.outputs):
                k = _HEADS.get(node.key)
                if k is not None and len(node.args) > k and isinstance(node.args[k], _Ref):
                    return i, k
                return None
        raise BundleError("program: no node produces the output")

    # ------------------------------------------------------------------------------------ run
    def program_tensors(self) -> dict[str, torch.Tensor]:
        """The program's tensors keyed by their names in the exported module (``fc1.weight``, ...)."""
        return {fqn: getattr(self, attr) for attr, fqn in self._fqn.items()}

    def bn_layers(self) -> list[tuple[str, _BatchNorm]]:
        return [(f"norms.{i}", m) for i, m in enumerate(self.norms)]

    def _env(self, x: torch.Tensor) -> dict[str, Any]:
        env: dict[str, Any] = {g: getattr(self, a) for g, a in self._slots.items()}
        env[self._input], env["__device__"] = x, x.device
        return env

    def _run(self, env: dict[str, Any], nodes: list[_Node]) -> None:
        for node in nodes:
            result = node.fn(*_resolve(node.args, env), **{k: _resolve(v, env) for k, v in node.kwargs.items()})
            if len(node.outputs) == 1:
                kind, name = node.outputs[0]
                if kind != "skip":
                    env[name] = list(result) if kind == "list" else result
            else:
                for (kind, name), value in zip(node.outputs, result):
                    if kind != "skip":
                        env[name] = list(value) if kind == "list" else value

    def _shape_input(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) == self.sample_shape:
            return x
        if x[0].numel() == int(torch.tensor(self.sample_shape).prod()):
            return x.reshape(len(x), *self.sample_shape)
        raise BundleError(f"program: takes inputs shaped (B, {', '.join(map(str, self.sample_shape))}), "
                          f"got {tuple(x.shape)}")

    def _chunks(self, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Run ``fn`` on ``x`` in pieces of the program's fixed batch size (the last one padded)."""
        if self.batch is None or len(x) == self.batch:
            return fn(x)
        outs = []
        for piece in x.split(self.batch):
            n = len(piece)
            if n < self.batch:
                piece = torch.cat([piece, piece[:1].expand(self.batch - n, *piece.shape[1:])])
            outs.append(fn(piece)[:n])
        return torch.cat(outs)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        env = self._env(x)
        self._run(env, self._nodes)
        return env[self._output]

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self._head is None:
            return self._logits(x)
        i, k = self._head
        env = self._env(x)
        self._run(env, self._nodes[:i])
        return env[self._nodes[i].args[k].name]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._chunks(self._shape_input(x), self._features)

    def forward_head(self, features: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        if self._head is None:
            return features
        i, k = self._head
        node = self._nodes[i]
        env = {g: getattr(self, a) for g, a in self._slots.items()}
        env["__device__"] = features.device
        args = _resolve(node.args, env | {node.args[k].name: features})
        return node.fn(*args, **{key: _resolve(v, env) for key, v in node.kwargs.items()})

    def forward(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        return self._chunks(self._shape_input(x), self._logits)

    def extra_repr(self) -> str:
        batch = "dynamic" if self.batch is None else self.batch
        return f"nodes={len(self._nodes)}, batch={batch}, sample_shape={self.sample_shape}, bn={len(self.norms)}"
