"""Declared options: what each layer, loss, optimizer and initializer accepts.

Each registry entry declares its options once, as `Option`s; spec validation, `nnctl config`
defaults and the JSON Schema (`nnctl schema`) read these declarations. The README's reference is
written by hand; tests/test_docs.py checks that it states every
entry and option as declared.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import NamedTuple


class Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED = Required()
# The options of an entry that takes none: read-only, since every such entry shares it.
NO_OPTIONS = MappingProxyType({})


class Invalid(Exception):
    """A value failed a check; the message is what was expected (the caller adds what was received)."""


class Check(NamedTuple):
    expected: str
    accept: object  # value -> bool
    schema: dict  # its JSON Schema (nnctl schema)
    convert: object = None  # value -> normalised value

    def __call__(self, value):
        if not self.accept(value):
            raise Invalid(self.expected)
        return self.convert(value) if self.convert else value


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def integer(minimum=None) -> Check:
    if minimum == 1:
        expected = "a positive integer"
    elif minimum == 0:
        expected = "a non-negative integer"
    else:
        expected = "an integer"
    schema = {"type": "integer"} | ({"minimum": minimum} if minimum is not None else {})
    return Check(expected, lambda v: _is_int(v) and (minimum is None or v >= minimum), schema)


def number(low=None, high=None, low_open=False, high_open=False) -> Check:
    """A finite number in [low, high], each end optionally open."""

    def accept(v):
        if not _is_number(v):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        if high is not None and (v >= high if high_open else v > high):
            return False
        return True

    if low is None and high is None:
        expected = "a finite number"
    elif high is None:
        expected = f"a number {'>' if low_open else '>='} {low:g}"
    elif low is None:
        expected = f"a number {'<' if high_open else '<='} {high:g}"
    else:
        expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    schema = {"type": "number"}
    if low is not None:
        schema["exclusiveMinimum" if low_open else "minimum"] = low
    if high is not None:
        schema["exclusiveMaximum" if high_open else "maximum"] = high
    return Check(expected, accept, schema, convert=float)


boolean = Check("true or false", lambda v: isinstance(v, bool), {"type": "boolean"})
text = Check("a non-empty string", lambda v: isinstance(v, str) and v != "", {"type": "string", "minLength": 1})


def optional(check: Check) -> Check:
    """`check`, or null (the option is off)."""
    return Check(
        f"{check.expected} or null", lambda v: v is None or check.accept(v),
        {"anyOf": [check.schema, {"type": "null"}]}, convert=lambda v: v if v is None or not check.convert else check.convert(v),
    )


def one_of(choices) -> Check:
    choices = tuple(choices)
    return Check(
        "one of " + ", ".join(choices), lambda v: isinstance(v, str) and v in choices, {"enum": list(choices)}
    )


class Option(NamedTuple):
    check: Check
    default: object = REQUIRED
    doc: str = ""


class Choice(NamedTuple):
    """A resolved registry choice: the entry's name and its options with defaults filled in."""

    name: str
    options: dict


class Typed(NamedTuple):
    """A value naming an entry of a registry: `name` or `{type: name, option: value, ...}`.

    `registry` is a zero-argument function so that declaring modules need not import each other.
    """

    registry: object
    what: str  # "initializer", "activation", ...


class Section(NamedTuple):
    """A nested mapping of declared options, or null (off); `true` means on with every default
    when `allow_true`. Each option inside is checked and reported at its own place."""

    options: dict
    what: str  # "early_stopping", "kernel_regularizer"
    allow_true: bool = False

    @property
    def expected(self) -> str:
        keys = ", ".join(self.options)
        return f"a mapping (keys {keys}){', true' if self.allow_true else ''} or null"
