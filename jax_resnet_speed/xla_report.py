"""Readable report of the optimised train-step HLO in an XLA dump directory.

Dump with `python -m jax_resnet_speed.train --xla-dump DIR ...` (or
XLA_FLAGS="--xla_dump_to=DIR --xla_dump_hlo_as_text"), then run
`python -m jax_resnet_speed.xla_report DIR`. It lists every convolution (shapes, dtype,
layout, window, library call or not), counts fusions, kernels, transposes, copies and
collectives, estimates the bytes moved per step and warns about patterns that cost speed.
See docs/xla.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import takewhile
from pathlib import Path
from typing import Any

DTYPE_BITS = {"pred": 8, "s4": 4, "u4": 4, "s8": 8, "u8": 8, "s16": 16, "u16": 16, "f16": 16, "bf16": 16,
              "s32": 32, "u32": 32, "f32": 32, "s64": 64, "u64": 64, "f64": 64, "c64": 64, "c128": 128}
# Bookkeeping instructions that launch no work; control flow is followed into its bodies instead.
NO_LAUNCH = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "add-dependency",
             "opt-barrier", "domain", "partition-id", "replica-id", "async-update"}
CONTROL_FLOW = {"while": ("condition", "body"), "call": ("to_apply",),
                "conditional": ("branch_computations", "true_computation", "false_computation")}
COLLECTIVES = {"all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all",
               "collective-broadcast", "ragged-all-to-all"}
# Custom fusion kinds that hand the fused ops to a library rather than to generated code.
LIBRARY_PREFIXES = ("__cudnn", "__cublas", "__onednn", "__ynn", "__xnn", "__mkl")
SPATIAL_NAMES = {1: "W", 2: "HW", 3: "DHW"}
DIM_LETTERS = {"b": "N", "f": "C", "i": "I", "o": "O"}
# A weight gradient written as a plain convolution (JAX's transpose rule) swaps roles: the
# activations' channels act as its batch, the batch is contracted like features, and its
# output is the kernel (batch -> I, feature -> O).
WEIGHT_GRAD_LETTERS = ({"b": "C", "f": "N"}, {"i": "N", "o": "C"}, {"b": "I", "f": "O"})
KERNELS_METHOD = ("top-level instructions of ENTRY and of the while/conditional/call bodies it runs (loops "
                  "times their known trip count, every conditional branch counted); a fusion is one kernel; "
                  "parameter, constant, tuple, get-tuple-element, bitcast and *-done launch nothing")
BYTES_METHOD = "operand + result bytes of every counted kernel, from shapes (no cache reuse)"


class ReportError(Exception):
    """A problem with the dump directory, reported as one line."""


@dataclass(frozen=True)
class Shape:
    dtype: str
    dims: tuple[int, ...]
    minor_to_major: tuple[int, ...] | None

    @property
    def nbytes(self) -> int:
        bits = DTYPE_BITS.get(self.dtype, 8 if self.dtype.startswith("f8") else 0)
        return math.prod(self.dims) * bits // 8

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.dims))}]"


@dataclass
class Instruction:
    name: str
    opcode: str
    shapes: list[Shape]
    operands: list[str]
    attrs: dict[str, str]

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.shapes)

    @property
    def op_name(self) -> str:
        match = re.search(r'op_name="((?:[^"\\]|\\.)*)"', self.attrs.get("metadata", ""))
        return match.group(1) if match else ""

    @property
    def target(self) -> str:
        return self.attrs.get("custom_call_target", "").strip('"')

    def called(self, *keys: str) -> list[str]:
        """Computation names in attributes like calls=%f or branch_computations={%a, %b}."""
        return [n.lstrip("%") for k in keys for n in re.findall(r"%?[\w.\-]+", self.attrs.get(k, ""))]


@dataclass
class Computation:
    name: str
    is_entry: bool
    instructions: dict[str, Instruction] = field(default_factory=dict)
    root: str = ""

    @cached_property
    def users(self) -> dict[str, list[Instruction]]:
        users: dict[str, list[Instruction]] = {}
        for inst in self.instructions.values():
            for operand in inst.operands:
                users.setdefault(operand, []).append(inst)
        return users

    def shape_of(self, name: str) -> Shape | None:
        inst = self.instructions.get(name)
        return inst.shapes[0] if inst and inst.shapes else None


@dataclass
class Module:
    name: str
    computations: dict[str, Computation]
    partitions: int = 1  # devices the program is split over (num_partitions in the header)

    @property
    def entry(self) -> Computation:
        for comp in self.computations.values():
            if comp.is_entry:
                return comp
        raise ReportError(f"module {self.name} has no ENTRY computation")


# ----------------------------------------------------------------------------- parsing

SHAPE_RE = re.compile(r"\b([a-z][a-z0-9]*)\[([^\]]*)\](?:\{([^}]*)\})?")
HEADER_RE = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\b.*\{\s*$")
INSTRUCTION_RE = re.compile(r"^\s+(ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
OPENERS, CLOSERS = "({[", ")}]"


def parse_shapes(text: str) -> list[Shape]:
    """Every array shape in a type such as `(bf16[8,32]{1,0:T(8,128)}, u8[0]{0})`."""
    shapes = []
    for dtype, dims, layout in SHAPE_RE.findall(text):
        if dtype == "token":
            continue
        sizes = tuple(int(re.sub(r"\D", "", d) or 0) for d in dims.split(",") if d.strip())
        order = layout.split(":")[0] if layout else None  # drop tiling / memory-space suffixes
        m2m = tuple(int(d) for d in order.split(",") if d.strip()) if order is not None else None
        shapes.append(Shape(dtype, sizes, m2m))
    return shapes


def _scan(text: str) -> Iterator[tuple[int, str, int]]:
    """(index, character, bracket depth around it) for every character outside string literals."""
    depth, quoted = 0, False
    for i, c in enumerate(text):
        if quoted:
            quoted = c != '"' or text[i - 1] == "\\"
            continue
        if c == '"':
            quoted = True
            continue
        depth -= c in CLOSERS
        yield i, c, depth
        depth += c in OPENERS


def _closing(text: str, start: int) -> int:
    """Index just past the bracket that closes the one at text[start]."""
    return next((start + i + 1 for i, c, depth in _scan(text[start:]) if depth == 0 and c in CLOSERS), len(text))


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside brackets or strings."""
    cuts = [i for i, c, depth in _scan(text) if c == "," and depth == 0]
    parts = [text[a + 1:b] for a, b in zip([-1, *cuts], [*cuts, len(text)])]
    return [p.strip() for p in parts if p.strip()]


def parse_instruction(name: str, body: str) -> Instruction | None:
    """`TYPE opcode(operands), key=value, ...` after `name =`; None if it does not look like one."""
    type_end = _closing(body, 0) if body.startswith("(") else body.find(" ")
    if type_end <= 0:
        return None
    match = re.match(r"\s*([a-z][\w\-]*)\(", body[type_end:])
    if not match:
        return None
    opcode = match.group(1)
    open_at = type_end + match.end() - 1
    close_at = _closing(body, open_at)
    operands = [] if opcode == "constant" else [
        o.split()[-1].lstrip("%") for o in _split_top(body[open_at + 1:close_at - 1])]
    attrs = {}
    for item in _split_top(body[close_at:]):
        key, _, value = item.partition("=")
        attrs[key.strip()] = value.strip()
    return Instruction(name, opcode, parse_shapes(body[:type_end]), operands, attrs)


def parse_module(text: str) -> Module:
    """Parse HLO text as XLA dumps it: one instruction per line, computations in braces."""
    header = re.search(r"^HloModule\s+([^\s,]+)", text, re.M)
    computations: dict[str, Computation] = {}
    current: Computation | None = None
    for raw in text.splitlines():
        line = re.sub(r"/\*.*?\*/", "", raw)  # drop /*index=5*/ comments
        if current is None:
            match = HEADER_RE.match(line)
            if match and not line.startswith(("HloModule", " ", "\t")):
                current = Computation(match.group(2), bool(match.group(1)))
                computations[current.name] = current
        elif line.strip() == "}":
            current = None
        elif match := INSTRUCTION_RE.match(line):
            inst = parse_instruction(match.group(2), match.group(3))
            if inst:
                current.instructions[inst.name] = inst
                if match.group(1):
                    current.root = inst.name
    partitions = re.search(r"^HloModule\s.*\bnum_partitions=(\d+)", text, re.M)
    return Module(header.group(1) if header else "?", computations, int(partitions.group(1)) if partitions else 1)


# ------------------------------------------------------------------------ dump files

@dataclass
class Selection:
    path: Path
    name: str
    note: str = ""


def _module_number(path: Path) -> int:
    match = re.match(r"module_(\d+)", path.name)
    return int(match.group(1)) if match else -1


def _dump_name(path: Path) -> str:
    with path.open(errors="replace") as f:
        match = re.match(r"HloModule\s+([^\s,]+)", f.readline())
    return match.group(1) if match else path.name


def find_module(dump_dir: str | Path, pattern: str = "train_step") -> Selection:
    """The optimised module whose name matches `pattern`: the largest (then latest) of several."""
    root = Path(dump_dir)
    if not root.is_dir():
        raise ReportError(f"{root} is not a directory")
    dumps = {p: _dump_name(p) for p in root.glob("*after_optimizations.txt")}
    if not dumps:
        raise ReportError(f"no *after_optimizations.txt HLO in {root}; was XLA_FLAGS="
                          f"'--xla_dump_to={root} --xla_dump_hlo_as_text' set before JAX started?")
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ReportError(f"bad --module regex {pattern!r}: {e}") from None
    matches = sorted((p for p, n in dumps.items() if regex.search(n)),
                     key=lambda p: (p.stat().st_size, _module_number(p)))
    if not matches:
        names = sorted(set(dumps.values()))
        shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
        raise ReportError(f"no module matches {pattern!r} in {root}; available: {shown}")
    chosen = matches[-1]
    note = (f"{len(matches)} modules match {pattern!r}; using the largest, {chosen.name}"
            if len(matches) > 1 else "")
    return Selection(chosen, dumps[chosen], note)


def detect_backend(path: Path, module: Module) -> str:
    stage = path.name.rsplit("after_optimizations", 1)[0]
    if "gpu" in stage or "sm_" in stage or "rocm" in stage:
        return "gpu"
    if "cpu" in stage:
        return "cpu"
    targets = " ".join(i.target for c in module.computations.values() for i in c.instructions.values())
    return "gpu" if "__cudnn" in targets or "__cublas" in targets else "unknown"


# -------------------------------------------------------------------------- analysis

def launched(module: Module) -> list[tuple[Computation, Instruction, int]]:
    """(computation, instruction, runs per step) for every instruction that launches work."""
    found: list[tuple[Computation, Instruction, int]] = []

    def visit(comp: Computation, times: int) -> None:
        for inst in comp.instructions.values():
            if inst.opcode in CONTROL_FLOW:
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', inst.attrs.get("backend_config", ""))
                inner = times * int(trips.group(1)) if trips and inst.opcode == "while" else times
                for name in inst.called(*CONTROL_FLOW[inst.opcode]):
                    if name in module.computations:
                        visit(module.computations[name], inner)
            elif inst.opcode not in NO_LAUNCH and not inst.opcode.endswith("-done"):
                found.append((comp, inst, times))

    visit(module.entry, 1)
    return found


def fused_instructions(module: Module, fusion: Instruction) -> Iterator[tuple[Computation, Instruction]]:
    """Instructions inside a fusion's computation, nested fusions included."""
    for name in fusion.called("calls"):
        comp = module.computations.get(name)
        for inst in comp.instructions.values() if comp else ():
            yield comp, inst
            if inst.opcode == "fusion":
                yield from fused_instructions(module, inst)


def library_kind(inst: Instruction) -> str:
    """The library a custom call or custom fusion hands its work to, or ''."""
    if inst.opcode == "custom-call":
        return inst.target
    kind = re.search(r'"kind":\s*"([^"]+)"', inst.attrs.get("backend_config", ""))
    return kind.group(1) if kind and kind.group(1).startswith(LIBRARY_PREFIXES) else ""


def is_conv(inst: Instruction) -> bool:
    return inst.opcode == "convolution" or (inst.opcode == "custom-call" and "conv" in inst.target.lower())


def layout_name(shape: Shape | None, labels: str, names: dict[str, str] = DIM_LETTERS) -> str:
    """Physical dimension order (major to minor) in letters, e.g. NHWC for b01f with {3,2,1,0}."""
    if shape is None or len(labels) != len(shape.dims):
        return "?"
    spatial = SPATIAL_NAMES.get(sum(c.isdigit() for c in labels), "")
    letters = [names.get(c, spatial[int(c)] if c.isdigit() and spatial else c) for c in labels]
    order = reversed(shape.minor_to_major) if shape.minor_to_major else range(len(labels))
    return "".join(letters[d] for d in order)


def short_op_name(op_name: str) -> str:
    """'jit(train_step)/transpose(jvp(Net))/Conv_1/conv_general_dilated' -> 'Net/Conv_1'."""
    parts = []
    for part in op_name.split("/"):
        while match := re.fullmatch(r"[\w.]+\((.*)\)", part):
            part = match.group(1)
        parts.append(part)
    if op_name.startswith("jit(") and len(parts) > 1:
        parts = parts[1:]
    if len(parts) > 1:
        parts = parts[:-1]  # the primitive name
    return "/".join(p for p in parts if p)


def classify_conv(inst: Instruction, window: dict[str, str], out_spatial: list[int]) -> str:
    target = inst.target.lower()
    if "backwardinput" in target:
        return "backward-input"
    if "backwardfilter" in target:
        return "backward-filter"
    if "forward" in target:
        return "forward"
    size = [int(s) for s in window.get("size", "").split("x") if s.isdigit()]
    # A weight gradient slides the activation gradient (large window) to a kernel-sized output.
    if size and out_spatial and math.prod(size) > math.prod(out_spatial):
        return "backward-filter"
    if "lhs_dilate" in window or "transpose(" in inst.op_name:
        return "backward-input"
    return "forward" if inst.op_name else "unknown"


def conv_roles(inst: Instruction, comp: Computation, kind: str) -> list[tuple[str, Shape | None, str, dict]]:
    """(role, shape, dim labels, label letters) of each tensor of a convolution."""
    lhs, _, rest = inst.attrs.get("dim_labels", "__->").partition("_")
    rhs, _, out = rest.partition("->")
    op = [comp.shape_of(o) for o in inst.operands[:2]] + [None, None]
    result = inst.shapes[0] if inst.shapes else None
    target = inst.target.lower()
    # cuDNN backward calls keep the forward conv's dim_labels, so the labels follow the roles.
    if "backwardinput" in target:
        return [("grad_out", op[0], out, DIM_LETTERS), ("kernel", op[1], rhs, DIM_LETTERS),
                ("grad_in", result, lhs, DIM_LETTERS)]
    if "backwardfilter" in target:
        return [("input", op[0], lhs, DIM_LETTERS), ("grad_out", op[1], out, DIM_LETTERS),
                ("grad_kernel", result, rhs, DIM_LETTERS)]
    if kind == "backward-filter":
        return [("input", op[0], lhs, WEIGHT_GRAD_LETTERS[0]), ("grad_out", op[1], rhs, WEIGHT_GRAD_LETTERS[1]),
                ("grad_kernel", result, out, WEIGHT_GRAD_LETTERS[2])]
    if kind == "backward-input":
        return [("grad_out", op[0], lhs, DIM_LETTERS), ("kernel", op[1], rhs, DIM_LETTERS),
                ("grad_in", result, out, DIM_LETTERS)]
    return [("input", op[0], lhs, DIM_LETTERS), ("kernel", op[1], rhs, DIM_LETTERS),
            ("output", result, out, DIM_LETTERS)]


def transpose_kind(module: Module, inst: Instruction) -> str:
    """'transpose', 'copy' or 'fused copy+transpose' etc. for layout-changing instructions, else ''."""
    base = inst.opcode.removesuffix("-start")
    if base in ("transpose", "copy"):
        return base
    if inst.opcode == "fusion":
        inner = {i.opcode for _, i in fused_instructions(module, inst)} & {"transpose", "copy"}
        return f"fused {'+'.join(sorted(inner))}" if inner else ""
    return ""


def _producer(comp: Computation, name: str) -> Instruction | None:
    inst = comp.instructions.get(name)
    while inst and inst.opcode == "bitcast" and inst.operands:
        inst = comp.instructions.get(inst.operands[0])
    return inst


def _consumers(comp: Computation, name: str) -> list[Instruction]:
    found = []
    for user in comp.users.get(name, []):
        found += _consumers(comp, user.name) if user.opcode in ("bitcast", "get-tuple-element") else [user]
    return found


def layout_neighbours(module: Module, comp: Computation, node: Instruction) -> list[str]:
    """Transposes/copies that feed `node` or consume its result."""
    near = [(p, "in") for p in map(lambda o: _producer(comp, o), node.operands) if p]
    near += [(c, "out") for c in _consumers(comp, node.name)]
    return [f"{side}: {inst.name} {inst.shapes[0] if inst.shapes else '?'} ({kind})"
            for inst, side in near if (kind := transpose_kind(module, inst))]


def upcast_source(module: Module, comp: Computation, name: str, fusion: Instruction | None,
                  top: Computation) -> str:
    """dtype a conv operand was converted from, if a convert (or convert fusion) produced it."""
    inst = _producer(comp, name)
    if inst and inst.opcode == "parameter" and fusion and inst.operands[0].isdigit():
        # A fused conv reads a fusion parameter: look at what feeds the fusion.
        comp, inst = top, _producer(top, fusion.operands[int(inst.operands[0])])
    if inst and inst.opcode == "fusion":
        inner = module.computations.get(next(iter(inst.called("calls")), ""))
        if inner and inner.root and inner.instructions[inner.root].opcode == "convert":
            comp, inst = inner, inner.instructions[inner.root]
    if inst and inst.opcode == "convert" and inst.operands:
        source = comp.shape_of(inst.operands[0])
        return source.dtype if source else ""
    return ""


def describe_conv(module: Module, comp: Computation, inst: Instruction, fusion: Instruction | None,
                  top: Computation) -> dict[str, Any]:
    window = dict(kv.split("=", 1) for kv in inst.attrs.get("window", "").strip("{}").split() if "=" in kv)
    out_labels = inst.attrs.get("dim_labels", "").partition("->")[2]
    result = inst.shapes[0] if inst.shapes else None
    out_spatial = ([result.dims[i] for i, c in enumerate(out_labels) if c.isdigit()]
                   if result and len(out_labels) == len(result.dims) else [])
    kind = classify_conv(inst, window, out_spatial)
    roles = conv_roles(inst, comp, kind)
    node = fusion or inst
    library = library_kind(inst) or (library_kind(fusion) if fusion else "")
    source = upcast_source(module, comp, inst.operands[0], fusion, top) if inst.operands else ""
    return {
        "name": inst.name, "kind": kind, "where": short_op_name(inst.op_name or node.op_name),
        "fusion": fusion.name if fusion else None, "library": library or None,
        "dtype": roles[0][1].dtype if roles[0][1] else "?", "upcast_from": source or None,
        "tensors": [{"role": r, "shape": str(s) if s else "?", "dims": list(s.dims) if s else [],
                     "layout": layout_name(s, lab, names)}
                    for r, s, lab, names in roles],
        "window": window, "dim_labels": inst.attrs.get("dim_labels", ""),
        "feature_group_count": int(inst.attrs.get("feature_group_count", 1)),
        "batch_group_count": int(inst.attrs.get("batch_group_count", 1)),
        "layout_neighbours": layout_neighbours(module, top, node),
    }


def find_convs(module: Module, kernels: list[tuple[Computation, Instruction, int]]) -> list[dict[str, Any]]:
    convs = []
    for comp, inst, _ in kernels:
        if is_conv(inst):
            convs.append(describe_conv(module, comp, inst, None, comp))
        elif inst.opcode == "fusion":
            convs += [describe_conv(module, inner_comp, inner, inst, comp)
                      for inner_comp, inner in fused_instructions(module, inst) if is_conv(inner)]
    name_weight_gradients(convs)
    return convs


def name_weight_gradients(convs: list[dict[str, Any]]) -> None:
    """XLA:CPU drops the metadata of weight-gradient convs: name them after the one forward conv
    whose kernel has the same dimensions (in any order)."""
    kernels = [(sorted(c["tensors"][1]["dims"]), c["where"]) for c in convs if c["kind"] == "forward"]
    for conv in convs:
        if conv["kind"] == "backward-filter" and not conv["where"]:
            names = {where for kernel, where in kernels if where and kernel == sorted(conv["tensors"][2]["dims"])}
            if len(names) == 1:
                conv["where"] = f"{names.pop()} (by kernel shape)"
            elif names:  # several layers share the kernel shape: name what they have in common
                common = [p[0] for p in takewhile(lambda p: len(set(p)) == 1, zip(*(n.split("/") for n in names)))]
                conv["where"] = f"{'/'.join(common + ['*'])} (by kernel shape, {len(names)} candidates)"


def kernel_bytes(comp: Computation, inst: Instruction) -> int:
    return inst.nbytes + sum(comp.instructions[o].nbytes for o in inst.operands if o in comp.instructions)


def dtype_warning(convs: list[dict[str, Any]], expect: str) -> str:
    """'' if every conv computes in `expect`, else which do not, and which XLA converted up."""
    off = [i for i, c in enumerate(convs, 1) if c["dtype"] != expect]
    if not off:
        return ""
    dtypes = "/".join(sorted({convs[i - 1]["dtype"] for i in off}))
    which = f"all {len(convs)}" if len(off) == len(convs) else f"{len(off)} of {len(convs)}"
    listed = "" if len(off) == len(convs) else f": #{','.join(map(str, off))}"
    upcast = [i for i in off if convs[i - 1]["upcast_from"] == expect]
    hint = (f"; #{','.join(map(str, upcast))} get {expect} inputs converted up by XLA (no {expect} "
            f"kernel for them on this backend)" if upcast else "")
    return f"{which} convolutions compute in {dtypes}, not {expect}{listed}{hint}"


def conv_warnings(convs: list[dict[str, Any]], backend: str, expect: str | None) -> list[str]:
    warnings = [f"conv #{i} {c['kind']} {c['where'] or c['name']}: layout change next to it, "
                f"{'; '.join(c['layout_neighbours'])}"
                for i, c in enumerate(convs, 1) if c["layout_neighbours"]]
    if expect and (warning := dtype_warning(convs, expect)):
        warnings.append(warning)
    plain = [i for i, c in enumerate(convs, 1) if not c["library"]]
    if backend == "gpu" and plain:
        warnings.append(f"{len(plain)} of {len(convs)} convolutions run as XLA's own kernels, not library "
                        f"(cuDNN) calls: #{','.join(map(str, plain))}")
    return warnings


def _tally(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    """Sum counts per key, most frequent first."""
    counts: Counter[str] = Counter()
    for key, n in pairs:
        counts[key] += n
    return dict(counts.most_common())


def build_report(module: Module, backend: str = "unknown", expect_dtype: str | None = None,
                 top: int = 5) -> dict[str, Any]:
    """The report as a JSON-ready dict; `expect_dtype` defaults to bf16/f16 if the module uses it."""
    kernels = launched(module)
    convs = find_convs(module, kernels)
    used = {s.dtype for _, i, _ in kernels for s in i.shapes}
    expect = expect_dtype or next((d for d in ("bf16", "f16") if d in used), None)
    fusions = _tally((i.attrs.get("kind", "?"), n) for _, i, n in kernels if i.opcode == "fusion")
    moves = [(kind, c, i, n) for c, i, n in kernels if (kind := transpose_kind(module, i))]
    moves.sort(key=lambda m: m[2].nbytes, reverse=True)
    collectives = [i for c in module.computations.values() for i in c.instructions.values()
                   if i.opcode.removesuffix("-start") in COLLECTIVES]
    warnings = conv_warnings(convs, backend, expect)
    if collectives and module.partitions == 1:
        warnings.append(f"{len(collectives)} collectives in the step (expected none on one device)")
    return {
        "module": module.name, "backend": backend, "expected_dtype": expect,
        "convolutions": convs,
        "kernels": {"count": sum(n for _, _, n in kernels),
                    "by_opcode": _tally((i.opcode, n) for _, i, n in kernels), "method": KERNELS_METHOD},
        "fusions": {"count": sum(fusions.values()), "by_kind": fusions},
        "library_calls": _tally((k, n) for _, i, n in kernels if (k := library_kind(i))),
        "transposes_copies": {
            "count": sum(n for *_, n in moves),
            "by_kind": _tally((k, n) for k, *_, n in moves),
            "largest": [{"name": i.name, "kind": k, "shape": str(i.shapes[0]) if i.shapes else "?",
                         "bytes": i.nbytes, "where": short_op_name(i.op_name)} for k, _, i, _ in moves[:top]]},
        "partitions": module.partitions,
        "collectives": {"count": len(collectives),
                        "list": [{"name": i.name, "opcode": i.opcode} for i in collectives]},
        "bytes_per_step": sum(kernel_bytes(c, i) * n for c, i, n in kernels),
        "bytes_method": BYTES_METHOD,
        "warnings": warnings,
    }


def report_dir(dump_dir: str | Path, pattern: str = "train_step", expect_dtype: str | None = None,
               top: int = 5) -> dict[str, Any]:
    """Find, parse and summarise the matching optimised module of a dump directory."""
    selection = find_module(dump_dir, pattern)
    module = parse_module(selection.path.read_text(errors="replace"))
    report = build_report(module, detect_backend(selection.path, module), expect_dtype, top)
    return {"file": str(selection.path), "note": selection.note or None, **report}


# ------------------------------------------------------------------------ formatting

def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def format_conv(index: int, conv: dict[str, Any]) -> list[str]:
    tensors = [f"{t['role']} {t['shape']} {t['layout']}" for t in conv["tensors"]]
    window = " ".join(f"{k} {v}" for k, v in conv["window"].items()) or "-"
    extras = [f"{k} {conv[k]}" for k in ("feature_group_count", "batch_group_count") if conv[k] != 1]
    runs = f"library {conv['library']}" if conv["library"] else "XLA convolution (no library call)"
    place = f" in fusion {conv['fusion']}" if conv["fusion"] else ""
    upcast = f" (inputs converted from {conv['upcast_from']})" if conv["upcast_from"] else ""
    return [f"  #{index:<2} {conv['kind']:<15} {conv['where'] or '?'}  [{conv['name']}{place}]",
            f"      {', '.join(tensors[:2])} -> {tensors[2]}",
            f"      dtype {conv['dtype']}{upcast}; window {window}; {'; '.join(extras + [runs])}"]


def format_report(report: dict[str, Any]) -> str:
    convs = report["convolutions"]
    kinds = Counter(c["kind"] for c in convs)
    moves = report["transposes_copies"]
    source = f" from {report['file']}" if report.get("file") else ""
    lines = [f"XLA report: {report['module']} ({report['backend']}){source}"]
    if report.get("note"):
        lines.append(f"note: {report['note']}")
    lines += ["", f"Convolutions: {len(convs)} ({_counts(dict(kinds.most_common()))}; "
                  f"{sum(bool(c['library']) for c in convs)} library calls); layouts major-to-minor"]
    for i, conv in enumerate(convs, 1):
        lines += format_conv(i, conv)
    lines += ["", f"Kernels per step (estimate): {report['kernels']['count']}",
              f"  by opcode: {_counts(report['kernels']['by_opcode'])}",
              f"  counted: {report['kernels']['method']}",
              f"Fusions: {report['fusions']['count']} ({_counts(report['fusions']['by_kind'])})",
              f"Library calls: {_counts(report['library_calls'])}",
              f"Transposes/copies: {moves['count']} ({_counts(moves['by_kind'])})"]
    lines += [f"  {m['kind']} {m['name']} {m['shape']} {_size(m['bytes'])}"
              + (f"  ({m['where']})" if m["where"] else "") for m in moves["largest"]]
    collectives = report["collectives"]
    kinds = _counts(_tally((c["opcode"], 1) for c in collectives["list"]))
    split = f", program split over {report['partitions']} devices" if report["partitions"] > 1 else ""
    lines += [f"Collectives: {collectives['count']}" + (f" ({kinds})" if collectives["count"] else "") + split,
              f"Bytes moved per step (estimate): {_size(report['bytes_per_step'])}, {report['bytes_method']}",
              "", f"Warnings: {len(report['warnings']) or 'none'}"]
    lines += [f"  - {w}" for w in report["warnings"]]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jax_resnet_speed.xla_report",
        description="Summarise the optimised train-step HLO of an XLA dump (--xla-dump DIR): convolutions, "
                    "fusions, kernels, transposes, collectives, bytes moved, and warnings.")
    parser.add_argument("dump_dir", metavar="DIR", help="directory given to --xla-dump / --xla_dump_to")
    parser.add_argument("--module", default="train_step", metavar="REGEX",
                        help="module name to report (searched in the HloModule name; default: %(default)s)")
    parser.add_argument("--expect-dtype", choices=("bf16", "f16", "f32"),
                        help="warn about convolutions in another dtype (default: bf16/f16 if the module uses it)")
    parser.add_argument("--top", type=int, default=5, metavar="N",
                        help="largest transposes/copies to list (default: 5)")
    parser.add_argument("--json", metavar="PATH", help="also write the report as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = report_dir(args.dump_dir, args.module, args.expect_dtype, args.top)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    except (ReportError, OSError) as e:
        print(f"xla_report: error: {e}", file=sys.stderr)
        return 1
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
