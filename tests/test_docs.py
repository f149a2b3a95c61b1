"""The README's spec reference agrees with the declarations: every registry entry has its row, and
each row states every declared option as `name` = default (what it accepts)."""
from __future__ import annotations

import re

import pytest

from nnctl.model.activations import ACTIVATIONS
from nnctl.model.initializers import INITIALIZERS
from nnctl.model.layers import LAYERS
from nnctl.options import REQUIRED, Section, Typed
from nnctl.train.losses import LOSSES
from nnctl.train.optimizers import OPTIMIZERS
from tests.helpers import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTIONS = {"Layers": LAYERS, "Activations": ACTIVATIONS, "Initializers": INITIALIZERS, "Losses": LOSSES, "Optimizers": OPTIMIZERS}


def _section(title: str) -> str:
    match = re.search(rf"^### {title}\b.*?(?=^##)", README, flags=re.S | re.M)
    assert match, f"the README has no '### {title}' section"
    return match.group(0)


def _row(section: str, name: str) -> str:
    match = re.search(rf"^\| `{re.escape(name)}` \|.*$", section, flags=re.M)
    assert match, f"no row for `{name}`"
    return match.group(0)


def _default(option) -> str:
    value = option.default
    if value is REQUIRED:
        return "required"
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def _accepts(option) -> str:
    check = option.check
    if isinstance(check, Typed):
        return f"{check.what} name or mapping"
    return check.expected if isinstance(check, Section) else check.expected


CASES = [(title, name) for title, registry in SECTIONS.items() for name in registry]


@pytest.mark.parametrize("title, name", CASES, ids=[f"{t}:{n}" for t, n in CASES])
def test_every_entry_and_option_is_in_the_reference(title, name):
    row = _row(_section(title), name)
    for option_name, option in SECTIONS[title][name].options.items():
        text = f"`{option_name}` = {_default(option)} ({_accepts(option)})"
        assert text in row, f"{title} `{name}`: {text!r} is not in {row!r}"


def test_every_column_preprocessing_option_is_in_the_reference():
    from nnctl.data.column_options import COLUMN_OPTIONS

    section = _section("Column preprocessing")
    for name, option in COLUMN_OPTIONS.items():
        assert f"| `{name}` | {_default(option)} | {_accepts(option)}" in section, name
