"""``highnoon-prepare-data --help`` prints its examples as they are typed: a line ending in a
backslash continues on the next line, never as a run of spaces inside one line."""

from __future__ import annotations

import re

from highnoon.launch import prepare_data


def test_help_examples_keep_their_continuation_lines() -> None:
    lines = prepare_data.__doc__.splitlines()
    continued = [i for i, line in enumerate(lines) if line.endswith(" \\")]
    assert len(continued) == 6
    assert all(lines[i + 1].startswith("        --") for i in continued)
    assert not [line for line in lines if re.search(r"\S {4,}--", line)]
