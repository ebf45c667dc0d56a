"""``highnoon-prepare-data --help`` prints its examples as they are typed: a line ending in a
backslash continues on the next line, never as a run of spaces inside one line.

The module's docstring is read from its source (``ast``), not by importing it: importing it
defines its absl flags in this process, which other launchers' tests define again."""

from __future__ import annotations

import ast
import os
import re

import highnoon

PREPARE_DATA = os.path.join(os.path.dirname(highnoon.__file__), "launch", "prepare_data.py")


def test_help_examples_keep_their_continuation_lines() -> None:
    with open(PREPARE_DATA, encoding="utf-8") as handle:
        lines = ast.get_docstring(ast.parse(handle.read()), clean=False).splitlines()
    continued = [i for i, line in enumerate(lines) if line.endswith(" \\")]
    assert len(continued) == 6
    assert all(lines[i + 1].startswith("        --") for i in continued)
    assert not [line for line in lines if re.search(r"\S {4,}--", line)]
