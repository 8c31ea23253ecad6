"""Precision policies as data: one TOML file per framework in this folder.

A policy file has these keys and no others:
- ``framework`` (str) and ``reference`` (str, where the lists come from);
- ``allow``, ``infer``, ``clear``, ``deny``: lists of op names (``domain::Op`` for ops
  outside the framework's default domain). An op may stand in one list only;
- ``shape_sources``: ops whose outputs depend only on their input's shape (Shape, Size);
  mark-shape-subgraphs stops walking there;
- ``[pins]``: op -> input indices that keep their dtype (never cast, e.g. Resize scales);
- ``[output_pins]``: op -> output indices that keep their dtype when the op runs in low
  precision (BatchNorm's running mean/variance outputs);
- ``[shape_inputs]``: op -> input indices that carry shapes, indices, axes or bounds; the
  subgraph feeding them stays in its dtype. ``-1`` means every input;
- ``[domain_aliases]``: op-set domain -> the domain the lists use (``"ai.onnx" = ""``);
- ``[input_normalizations]``: normalization op -> its data input index; such a node whose
  data comes from a graph input (directly or through ``input_passthrough`` ops, clear
  ops and casts) is pinned FP32 by pin-input-norms;
- ``input_passthrough``: ops (outside the clear list) that move an input's values
  without computing on them (MXNet's Reshape, transpose), looked through by that rule;
- ``[gather_tables]``: gather/embedding op -> the index of its table input; a table
  that is a float constant is stored in low precision and the gathered rows are cast
  up for FP32 readers (assign-precision, final step);
- ``[[conditional]]`` tables ``{op, attr, values, list}``: the op moves to ``list`` when
  attribute ``attr`` has one of ``values``.
Loading rejects unknown keys, an op in two lists and a bad conditional rule."""
from __future__ import annotations

import functools
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixprec.errors import PolicyError

logger = logging.getLogger(__name__)

LISTS = ("allow", "infer", "clear", "deny")
UNLISTED = "unlisted"
_KEYS = {"framework", "reference", *LISTS, "shape_sources", "pins", "output_pins", "shape_inputs", "conditional",
         "domain_aliases", "input_normalizations", "input_passthrough", "gather_tables"}
_RULE_KEYS = {"op", "attr", "values", "list"}
POLICY_DIR = Path(__file__).parent


@dataclass(frozen=True)
class ConditionalRule:
    op: str
    attr: str
    values: tuple
    list: str


@dataclass
class Policy:
    """The four op lists plus pins, shape inputs and conditional rules of one framework."""
    framework: str
    reference: str = ""
    lists: dict[str, frozenset[str]] = field(default_factory=dict)
    shape_sources: frozenset[str] = frozenset()
    pins: dict[str, frozenset[int]] = field(default_factory=dict)
    output_pins: dict[str, frozenset[int]] = field(default_factory=dict)
    shape_inputs: dict[str, frozenset[int]] = field(default_factory=dict)
    conditional: tuple[ConditionalRule, ...] = ()
    domain_aliases: dict[str, str] = field(default_factory=dict)
    input_normalizations: dict[str, frozenset[int]] = field(default_factory=dict)
    input_passthrough: frozenset[str] = frozenset()
    gather_tables: dict[str, frozenset[int]] = field(default_factory=dict)
    _category: dict[str, str] = field(default_factory=dict, repr=False)
    _rules: dict[str, list[ConditionalRule]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        """Index the lists; an op named twice is a PolicyError. Lookups by op name fall
        back from dotted overload names to their prefix, for lists, pins and rules alike."""
        for name in LISTS:
            for op in self.lists.get(name, ()):
                if op in self._category:
                    raise PolicyError(f"{self.framework} policy: op {op!r} is in both "
                                      f"{self._category[op]!r} and {name!r}; keep it in one list")
                self._category[op] = name
        for rule in self.conditional:
            self._rules.setdefault(rule.op, []).append(rule)

    @property
    def known_ops(self) -> frozenset[str]:
        return frozenset(self._category)

    def canonical(self, op: str) -> str:
        """``op`` with its domain replaced as ``domain_aliases`` says (``ai.onnx::Conv`` ->
        ``Conv``)."""
        if "::" in op and self.domain_aliases:
            domain, name = op.split("::", 1)
            if domain in self.domain_aliases:
                alias = self.domain_aliases[domain]
                return f"{alias}::{name}" if alias else name
        return op

    def base_category(self, op: str) -> str:
        """The list that names ``op``, or 'unlisted'. A dotted name whose full form is not
        listed falls back to its prefix (``aten.conv2d.default`` -> ``aten.conv2d``)."""
        op = self.canonical(op)
        cat = self._category.get(op)
        while cat is None and "." in op:
            op = op.rsplit(".", 1)[0]
            cat = self._category.get(op)
        return cat or UNLISTED

    def category(self, op: str, attrs: dict[str, Any] | None = None) -> tuple[str, str]:
        """(list, why) for an op with these attributes, conditional rules applied."""
        op = self.canonical(op)
        for rule in _lookup(self._rules, op) or ():
            value = (attrs or {}).get(rule.attr)
            if _matches(value, rule.values):
                return rule.list, f"{rule.list} list because {rule.attr}={value!r}"
        cat = self.base_category(op)
        if cat == UNLISTED:
            return cat, f"op in no list of the {self.framework} policy; kept in its dtype"
        return cat, f"{cat} list"

    def has_rules(self, op: str) -> bool:
        """True when a conditional rule may change ``op``'s list (its attributes decide)."""
        return bool(_lookup(self._rules, self.canonical(op)))

    def pinned_inputs(self, op: str) -> frozenset[int]:
        """The input indices of ``op`` that keep their dtype (-1: every input)."""
        return _lookup(self.pins, self.canonical(op)) or frozenset()

    def pinned_outputs(self, op: str) -> frozenset[int]:
        """The output indices of ``op`` that keep their dtype (-1: every output)."""
        return _lookup(self.output_pins, self.canonical(op)) or frozenset()

    def shape_input_indices(self, op: str) -> frozenset[int]:
        """The input indices of ``op`` that carry a shape, index, axis or bound (-1: every input)."""
        return _lookup(self.shape_inputs, self.canonical(op)) or frozenset()

    def is_pinned(self, op: str, index: int) -> bool:
        """True when input ``index`` of ``op`` keeps its dtype (never cast)."""
        return _has_index(_lookup(self.pins, self.canonical(op)), index)

    def is_output_pinned(self, op: str, index: int) -> bool:
        """True when output ``index`` of ``op`` keeps its dtype in a low-precision node."""
        return _has_index(_lookup(self.output_pins, self.canonical(op)), index)

    def is_shape_input(self, op: str, index: int) -> bool:
        """True when input ``index`` of ``op`` carries a shape, index, axis or bound."""
        return _has_index(_lookup(self.shape_inputs, self.canonical(op)), index)

    def normalized_input(self, op: str) -> int | None:
        """The data input index of a normalization op named in ``input_normalizations``."""
        return _first(_lookup(self.input_normalizations, self.canonical(op)))

    def gather_table(self, op: str) -> int | None:
        """The table input index of a gather/embedding op named in ``gather_tables``."""
        return _first(_lookup(self.gather_tables, self.canonical(op)))

    def is_passthrough(self, op: str) -> bool:
        return _in_set(self.input_passthrough, self.canonical(op))

    def is_shape_source(self, op: str) -> bool:
        return _in_set(self.shape_sources, self.canonical(op))


def _lookup(table: dict, op: str):
    """``table[op]``, falling back from dotted names to their prefixes."""
    while True:
        hit = table.get(op)
        if hit is not None or "." not in op:
            return hit
        op = op.rsplit(".", 1)[0]


def _in_set(names: frozenset[str], op: str) -> bool:
    """``op`` or one of its dotted prefixes is in ``names`` (as ``_lookup``)."""
    while True:
        if op in names:
            return True
        if "." not in op:
            return False
        op = op.rsplit(".", 1)[0]


def _first(indices: frozenset[int] | None) -> int | None:
    return min(indices) if indices else None


def _has_index(indices: frozenset[int] | None, index: int) -> bool:
    return indices is not None and (index in indices or -1 in indices)


def _matches(value: Any, values: tuple) -> bool:
    if isinstance(value, bytes):
        value = value.decode()
    return value in values


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _string(data: dict[str, Any], key: str, where: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise PolicyError(f"{where}: key {key!r} must be a string, got {_describe(value)}")
    return value


def _names(data: dict[str, Any], key: str, where: str) -> list[str]:
    """The list of op names under ``key`` (empty when absent)."""
    ops = data.get(key, [])
    if not isinstance(ops, list):
        raise PolicyError(f"{where}: key {key!r} must be a list of op names, got {_describe(ops)}")
    for i, op in enumerate(ops):
        if not isinstance(op, str):
            raise PolicyError(f"{where}: key {key!r} must be a list of op names; item {i} is {_describe(op)}")
    return ops


def _index_table(data: Any, key: str, where: str) -> dict[str, frozenset[int]]:
    if not isinstance(data, dict):
        raise PolicyError(f"{where}: key {key!r}: [{key}] must be a table of op = [input indices], got {_describe(data)}")
    out = {}
    for op, idx in data.items():
        if not isinstance(idx, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
            raise PolicyError(f"{where}: key {key!r}: [{key}] {op} must be a list of input indices, got {idx!r}")
        out[op] = frozenset(idx)
    return out


def _conditional(data: Any, where: str) -> list[ConditionalRule]:
    if not isinstance(data, list):
        raise PolicyError(f"{where}: key 'conditional' must be an array of tables ([[conditional]]), "
                          f"got {_describe(data)}")
    rules = []
    for i, rule in enumerate(data):
        if not isinstance(rule, dict) or set(rule) != _RULE_KEYS:
            raise PolicyError(f"{where}: key 'conditional': conditional rule {i} needs exactly the keys {sorted(_RULE_KEYS)}")
        for key in ("op", "attr", "list"):
            if not isinstance(rule[key], str):
                raise PolicyError(f"{where}: key 'conditional': conditional rule {i}: {key} must be a string, "
                                  f"got {_describe(rule[key])}")
        if not isinstance(rule["values"], list) or any(isinstance(v, (list, dict)) for v in rule["values"]):
            raise PolicyError(f"{where}: key 'conditional': conditional rule {i}: values must be a list of attribute values, "
                              f"got {_describe(rule['values'])}")
        if rule["list"] not in LISTS:
            raise PolicyError(f"{where}: key 'conditional': conditional rule {i} names unknown list {rule['list']!r}; "
                              f"use one of {list(LISTS)}")
        rules.append(ConditionalRule(rule["op"], rule["attr"], tuple(rule["values"]), rule["list"]))
    return rules


def parse_policy(data: dict[str, Any], where: str) -> Policy:
    """Build a Policy from a parsed TOML table; ``where`` names it in errors, and every
    error names the key that is wrong."""
    if not isinstance(data, dict):
        raise PolicyError(f"{where}: a policy is a TOML table, got {_describe(data)}")
    unknown = set(data) - _KEYS
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {sorted(unknown)}; allowed keys are {sorted(_KEYS)}")
    lists = {}
    for name in LISTS:
        ops = _names(data, name, where)
        dup = {o for o in ops if ops.count(o) > 1}
        if dup:
            raise PolicyError(f"{where}: key {name!r}: {sorted(dup)} listed twice in {name!r}")
        lists[name] = frozenset(ops)
    return Policy(
        framework=_string(data, "framework", where, "generic"),
        reference=_string(data, "reference", where, ""),
        lists=lists,
        shape_sources=frozenset(_names(data, "shape_sources", where)),
        pins=_index_table(data.get("pins", {}), "pins", where),
        output_pins=_index_table(data.get("output_pins", {}), "output_pins", where),
        shape_inputs=_index_table(data.get("shape_inputs", {}), "shape_inputs", where),
        conditional=tuple(_conditional(data.get("conditional", []), where)),
        domain_aliases=_aliases(data.get("domain_aliases", {}), where),
        input_normalizations=_index_table(data.get("input_normalizations", {}), "input_normalizations", where),
        input_passthrough=frozenset(data.get("input_passthrough", [])),
        gather_tables=_index_table(data.get("gather_tables", {}), "gather_tables", where),
    )


def _aliases(data: Any, where: str) -> dict[str, str]:
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise PolicyError(f"{where}: key 'domain_aliases' must map domain names to domain names")
    return dict(data)


def load_policy_file(path: str | Path) -> Policy:
    """Read and validate a policy file. Every failure is a PolicyError naming the file
    (and, for a bad value, the key)."""
    path = Path(path)
    if path.is_dir():
        raise PolicyError(f"policy file {path} is a directory; pass the path of a .toml policy file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"policy file {path} does not exist") from None
    except OSError as exc:
        raise PolicyError(f"policy file {path} cannot be read ({exc.strerror or type(exc).__name__}); "
                          "check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"policy file {path} is not UTF-8 text (byte {exc.start}); a policy file is TOML "
                          "text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy file {path} is not valid TOML: {' '.join(str(exc).split())}") from None
    return parse_policy(data, f"policy file {path}")


@functools.lru_cache(maxsize=None)
def _builtin(framework: str) -> Policy:
    path = POLICY_DIR / f"{framework}.toml"
    if not path.exists():
        available = sorted(p.stem for p in POLICY_DIR.glob("*.toml"))
        raise PolicyError(f"no built-in policy for framework {framework!r}; available: {available}, "
                          "or pass the path of a policy file")
    return load_policy_file(path)


def load_policy(name_or_path: str | Path) -> Policy:
    """A built-in policy by framework name (``onnx``, ``tensorflow``, ``torch``, ``mxnet``,
    ``generic``) or a policy file by path."""
    if isinstance(name_or_path, Path):
        return load_policy_file(name_or_path)
    if not isinstance(name_or_path, str):
        raise PolicyError(f"a policy is a built-in name ({', '.join(builtin_policies())}) or the path of a .toml "
                          f"file, not {type(name_or_path).__name__}")
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        return load_policy_file(name_or_path)
    return _builtin(name_or_path)



def builtin_policies() -> list[str]:
    """Names of the policies shipped with mixprec."""
    return sorted(p.stem for p in POLICY_DIR.glob("*.toml"))
