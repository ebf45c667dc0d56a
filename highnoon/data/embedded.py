"""Embedded default datasets: built on this machine, no network, deterministic.

Registered by name when ``highnoon.data`` is imported and built lazily when iterated:

* ``stdlib_code``: the Python standard library's ``.py`` files (``sysconfig``'s ``stdlib`` path;
  ``site-packages``, ``test``/``tests``, ``idlelib`` and ``__pycache__`` excluded), sorted by
  relative path. Each file is split with ``ast`` into one sample per top-level function or class
  (decorators included) plus one sample for the remaining module-level lines; a file that does not
  parse is one sample. Pieces longer than ``max_chars`` are cut at line boundaries. Every sample
  starts with ``# file: <relative path>``.
* ``stdlib_docs``: docstrings (``inspect.cleandoc``) of stdlib modules and of their public classes,
  functions and methods, as ``"<qualified name>\\n\\n<docstring>"``; docstrings under ``min_chars``
  are dropped.
* ``stdlib_instructions``: one instruction pair per documented public function/class:
  ``"### Instruction: What does `json.dumps` do?\\n### Response: <first docstring paragraph>"``
  (classes: ``What is `X` used for?``).
* ``arithmetic``: ``"123+45=168"`` problems; sample ``i`` has ``1 + i % max_digits`` digits per
  operand (difficulty = digits), operands and operator (``+``, ``-``, ``*``) drawn from a
  ``numpy.random.Generator(PCG64(seed))``.
* ``brackets``: balanced sequences over ``()[]{}<>``; sample ``i`` has nesting depth exactly
  ``1 + i % max_depth`` (difficulty = depth), shape drawn from a seeded generator.

**Data quality.** ``arithmetic`` and ``brackets`` take ``noise`` (default 0): that share of the
samples is corrupted, the rest is exactly what ``noise=0`` gives (the corruption draws from its
own keyed hash of the sample index, never from the generator). A corrupted ``arithmetic`` sample
has a wrong answer (the true one moved by 1 to ``10 ** digits``, up or down); a corrupted
``brackets`` sequence has its characters in a keyed shuffled order, reversed when the shuffle
left it balanced (a reversed balanced sequence never is). A noisy bulk and a small clean set are
the two qualities of data a "best data last" schedule mixes (``bench/curriculum_value.py``).

The stdlib datasets depend only on the Python version installed (recorded in ``describe()``);
the synthetic ones only on their options. ``max_samples`` caps every dataset (tests stay small).
"""

from __future__ import annotations

import ast
import inspect
import os
import sys
import sysconfig
from collections.abc import Iterator
from typing import Any

import numpy as np

from highnoon.data.sources import DataSource
from highnoon.utils.hashing import KeyedPermutation, keyed_hash
from highnoon.utils.validation import InvalidArgumentError, check_fraction

_EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}


def stdlib_files() -> list[tuple[str, str]]:
    """(relative path, absolute path) of the stdlib's .py files, sorted by relative path."""
    root = sysconfig.get_paths()["stdlib"]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS)
        for filename in filenames:
            if filename.endswith(".py"):
                full = os.path.join(dirpath, filename)
                found.append((os.path.relpath(full, root).replace(os.sep, "/"), full))
    found.sort()
    return found


def _module_name(relative: str) -> str:
    parts = relative[: -len(".py")].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _read_source(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _chunk_lines(text: str, max_chars: int) -> list[str]:
    """Cut ``text`` at line boundaries into pieces of at most ``max_chars`` (longer lines alone)."""
    pieces, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        if current and size + len(line) > max_chars:
            pieces.append("".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        pieces.append("".join(current))
    return pieces


def _code_samples(relative: str, source: str, max_chars: int) -> list[str]:
    lines = source.splitlines(keepends=True)
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        pieces = [source]
    else:
        pieces, rest, covered = [], [], set()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
                end = node.end_lineno or node.lineno
                pieces.append("".join(lines[start:end]))
                covered.update(range(start, end))
        rest = [line for i, line in enumerate(lines) if i not in covered]
        if "".join(rest).strip():
            pieces.insert(0, "".join(rest))
    header = f"# file: {relative}\n"
    out = []
    for piece in pieces:
        if piece.strip():
            out.extend(header + chunk for chunk in _chunk_lines(piece, max_chars))
    return out


def _documented(relative: str, source: str) -> Iterator[tuple[str, str, str]]:
    """(kind, qualified name, cleaned docstring) for the module and its public definitions."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    module = _module_name(relative)
    if any(part.startswith("_") for part in module.split(".")):
        return  # private modules are not documented API
    doc = ast.get_docstring(tree, clean=False)
    if doc:
        yield "module", module, inspect.cleandoc(doc)

    def walk(nodes: list[ast.stmt], prefix: str) -> Iterator[tuple[str, str, str]]:
        for node in nodes:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if node.name.startswith("_"):
                continue
            qualified = f"{prefix}.{node.name}"
            doc = ast.get_docstring(node, clean=False)
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            if doc:
                yield kind, qualified, inspect.cleandoc(doc)
            if isinstance(node, ast.ClassDef):
                yield from walk(node.body, qualified)

    yield from walk(tree.body, module)


def _limit(iterator: Iterator[str], max_samples: int | None) -> Iterator[str]:
    for count, sample in enumerate(iterator):
        if max_samples is not None and count >= max_samples:
            return
        yield sample


class EmbeddedSource(DataSource):
    """One of the embedded datasets (see the module docstring)."""

    def __init__(self, kind: str, **options: Any) -> None:
        super().__init__()
        defaults = EMBEDDED_DEFAULTS.get(kind)
        if defaults is None:
            raise InvalidArgumentError(
                f"unknown embedded dataset {kind!r}; known: {sorted(EMBEDDED_DEFAULTS)}"
            )
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise InvalidArgumentError(
                f"options {unknown} are not accepted by embedded dataset {kind!r}; allowed: "
                f"{sorted(defaults)}"
            )
        self.name = kind
        self.kind = kind
        self.options = {**defaults, **options}
        max_samples = self.options["max_samples"]
        if max_samples is not None and int(max_samples) < 1:
            raise InvalidArgumentError(
                f"max_samples={max_samples} must be a positive integer or None"
            )
        if "noise" in self.options:
            self.options["noise"] = check_fraction(f"{kind} noise", self.options["noise"])

    def iter_samples(self) -> Iterator[str]:
        self.stats.clear()
        generator = getattr(self, f"_{self.kind}")
        yield from _limit(generator(), self.options["max_samples"])

    def describe(self) -> dict[str, Any]:
        options = dict(self.options)
        if options.get("noise") == 0.0:  # clean data keeps the description it always had
            options.pop("noise")
        description = {"type": "embedded", "name": self.kind, "options": options}
        if self.kind.startswith("stdlib"):
            description["python"] = sys.version.split()[0]
        return description

    def _stdlib_code(self) -> Iterator[str]:
        for relative, path in stdlib_files():
            source = _read_source(path)
            if source is not None:
                yield from _code_samples(relative, source, int(self.options["max_chars"]))

    def _stdlib_docs(self) -> Iterator[str]:
        min_chars = int(self.options["min_chars"])
        for relative, path in stdlib_files():
            source = _read_source(path)
            if source is None:
                continue
            for _, qualified, doc in _documented(relative, source):
                if len(doc) >= min_chars:
                    yield f"{qualified}\n\n{doc}"

    def _stdlib_instructions(self) -> Iterator[str]:
        min_chars = int(self.options["min_chars"])
        for relative, path in stdlib_files():
            source = _read_source(path)
            if source is None:
                continue
            for kind, qualified, doc in _documented(relative, source):
                if kind == "module":
                    continue
                paragraph = doc.split("\n\n")[0].strip()
                if len(paragraph) < min_chars:
                    continue
                question = (
                    f"What is `{qualified}` used for?"
                    if kind == "class"
                    else f"What does `{qualified}` do?"
                )
                yield f"### Instruction: {question}\n### Response: {paragraph}"

    def _arithmetic(self) -> Iterator[str]:
        rng = np.random.Generator(np.random.PCG64(int(self.options["seed"])))
        max_digits = int(self.options["max_digits"])
        ops = "+-*"
        index = 0
        while True:
            digits = 1 + index % max_digits
            low = 0 if digits == 1 else 10 ** (digits - 1)
            a = int(rng.integers(low, 10**digits))
            b = int(rng.integers(low, 10**digits))
            op = ops[int(rng.integers(0, len(ops)))]
            result = a + b if op == "+" else a - b if op == "-" else a * b
            if self._noisy(index):
                shift = 1 + int(self._corruption(index) % np.uint64(10**digits))
                result += shift if self._corruption(index) >> np.uint64(63) else -shift
            yield f"{a}{op}{b}={result}"
            index += 1

    def _brackets(self) -> Iterator[str]:
        rng = np.random.Generator(np.random.PCG64(int(self.options["seed"])))
        max_depth = int(self.options["max_depth"])
        pairs = ["()", "[]", "{}", "<>"]

        def build(depth: int) -> str:
            # a sequence whose deepest nesting is exactly ``depth``
            if depth == 0:
                return ""
            pair = pairs[int(rng.integers(0, len(pairs)))]
            inner = build(depth - 1)
            siblings = int(rng.integers(0, 3)) if depth > 1 else 0
            parts = [pair[0] + inner + pair[1]]
            for _ in range(siblings):
                d = int(rng.integers(1, depth))  # shallower, so the size stays bounded
                parts.insert(int(rng.integers(0, len(parts) + 1)), build(d))
            return "".join(parts)

        index = 0
        while True:
            sequence = build(1 + index % max_depth)
            if self._noisy(index):
                sequence = _scrambled(sequence, int(self.options["seed"]), index)
            yield sequence
            index += 1

    def _noisy(self, index: int) -> bool:
        """Is sample ``index`` corrupted: a keyed draw below ``noise`` (module docstring)."""
        noise = float(self.options.get("noise", 0.0))
        if noise == 0.0:
            return False
        draw = int(keyed_hash(np.array([index]), "noise", self.kind, self.options["seed"])[0])
        return draw / 2.0**64 < noise

    def _corruption(self, index: int) -> np.uint64:
        """A keyed 64-bit draw that sets how sample ``index`` is corrupted."""
        return keyed_hash(np.array([index]), "corrupt", self.kind, self.options["seed"])[0]


def _scrambled(sequence: str, seed: int, index: int) -> str:
    """``sequence``'s characters in a keyed order; reversed if that is still balanced."""
    order = KeyedPermutation(len(sequence), "brackets_noise", seed, index)(
        np.arange(len(sequence), dtype=np.int64)
    )
    out = "".join(sequence[int(i)] for i in order)
    return out[::-1] if is_balanced(out) else out


EMBEDDED_DEFAULTS: dict[str, dict[str, Any]] = {
    "stdlib_code": {"max_samples": None, "max_chars": 8000},
    "stdlib_docs": {"max_samples": None, "min_chars": 40},
    "stdlib_instructions": {"max_samples": None, "min_chars": 20},
    "arithmetic": {"max_samples": 10000, "seed": 0, "max_digits": 6, "noise": 0.0},
    "brackets": {"max_samples": 10000, "seed": 0, "max_depth": 8, "noise": 0.0},
}


def max_depth_of(sequence: str) -> int:
    """Deepest nesting of a bracket sequence (for checks and difficulty labels)."""
    depth = best = 0
    for char in sequence:
        depth += 1 if char in "([{<" else -1
        best = max(best, depth)
    return best


def is_balanced(sequence: str) -> bool:
    """Does every bracket of ``sequence`` close the last one opened (and all close)?"""
    stack = []
    for char in sequence:
        if char in "([{<":
            stack.append(")]}>"["([{<".index(char)])
        elif not stack or stack.pop() != char:
            return False
    return not stack
