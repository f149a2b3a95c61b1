"""YAML reading that keeps every node's position and rejects what plain YAML would swallow.

Safe tags only (no Python objects), no duplicate keys, string keys only. Returns plain Python
data plus a table of positions keyed by path tuples (("layers", 2, "units") -> line, column).
"""
from __future__ import annotations

import re

import yaml

from nnctl.errors import Problem, SpecError, describe


class Marks:
    """Where each value (and each mapping key) of a document starts, 1-based."""

    def __init__(self, file: str):
        self.file = file
        self.values: dict[tuple, tuple[int, int]] = {}
        self.keys: dict[tuple, tuple[int, int]] = {}

    def at(self, path: tuple, key: bool = False) -> tuple[int | None, int | None]:
        """The position of `path`, or of its nearest ancestor that has one."""
        table = self.keys if key else self.values
        while path:
            if path in table:
                return table[path]
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.values.get((), (None, None))


class _Loader(yaml.SafeLoader):
    """SafeLoader, plus YAML 1.2's exponent floats: `1e-3` is a number, not the string '1e-3'."""

    yaml_implicit_resolvers = {key: list(value) for key, value in yaml.SafeLoader.yaml_implicit_resolvers.items()}


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)

if yaml.__with_libyaml__:
    from yaml.composer import Composer
    from yaml.constructor import SafeConstructor
    from yaml.cyaml import CParser
    from yaml.resolver import Resolver

    class _FastLoader(Composer, CParser, SafeConstructor, Resolver):
        """_Loader's nodes from libyaml's events: scanning and parsing in C take a tenth of the
        pure-Python parser's time, which was most of what reading a spec cost. The composer stays
        Python's: libyaml's recurses in C and crashes the process on deep nesting, where this one
        raises RecursionError."""

        yaml_implicit_resolvers = _Loader.yaml_implicit_resolvers

        def __init__(self, stream):
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
else:
    _FastLoader = _Loader


def _compose(text: str):
    """The document's root node. Where libyaml and the Python parser both accept a document they
    build the same nodes (tests/test_fuzz.py); libyaml also accepts valid YAML the Python parser
    refuses (a tab after `key:`). But it words its errors otherwise, and refuses a lone surrogate
    escape that the checks below explain better, so a document it refuses is composed again by the
    Python parser: the message is that parser's, or the checks' where it accepts the document."""
    try:
        return yaml.compose(text, Loader=_FastLoader)
    except yaml.YAMLError:
        return yaml.compose(text, Loader=_Loader)

MAX_DEPTH = 32  # levels of nesting; a spec needs about 5
MAX_VALUES = 100_000  # values in the document once aliases are expanded
_TAG = "tag:yaml.org,2002:"
_REFUSED = object()
# The only tags a spec may carry (what a JSON document could say): anything else, a Python
# object, a set, binary data or an application tag, is refused before it is constructed.
_PLAIN_SCALARS = {_TAG + t for t in ("null", "bool", "int", "float", "str")}
_PLAIN_TAGS = {yaml.ScalarNode: _PLAIN_SCALARS, yaml.SequenceNode: {_TAG + "seq"}, yaml.MappingNode: {_TAG + "map"}}


def _position(mark) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


def load_yaml(text: str, file: str):
    """Parse `text`; raise SpecError listing every structural problem at once."""
    marks = Marks(file)
    problems: list[Problem] = []
    try:
        root = _compose(text)
    except RecursionError:
        raise SpecError(Problem(f"expected a spec nested at most {MAX_DEPTH} levels deep, received deeper nesting", file)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, column = _position(mark) if mark else (None, None)
        reason = getattr(exc, "problem", None) or str(exc)
        raise SpecError(Problem(f"expected valid YAML, received a syntax error: {reason}", file, line, column)) from None
    if root is None:
        raise SpecError(Problem("expected a YAML mapping of spec keys, received an empty file", file))
    constructor = _Loader("")

    def refuse_tag(node, path) -> bool:
        """True (and a problem noted) for a tag that is not plain data."""
        if node.tag == _TAG + "timestamp" and isinstance(node, yaml.ScalarNode):
            node.tag = _TAG + "str"  # no spec value is a date: keep `2024-01-02` as the text written
        if node.tag in _PLAIN_TAGS[type(node)]:
            return False
        shown = "!!" + node.tag[len(_TAG):] if node.tag.startswith(_TAG) else node.tag
        problems.append(
            Problem(f"expected plain data (nnctl constructs no tagged objects), received a value tagged {shown!r}",
                    file, *_position(node.start_mark), path=path_text(path) or None)
        )
        return True

    def scalar(node, path):
        """A scalar's value, or _REFUSED (and a problem noted)."""
        try:
            value = constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, OverflowError):
            problems.append(Problem(f"expected a value that fits its tag {node.tag!r}, received {node.value!r}",
                                    file, *_position(node.start_mark), path=path_text(path) or None))
            return _REFUSED
        if isinstance(value, str) and _has_surrogate(value):
            shown = value.encode("utf-8", "backslashreplace").decode()
            problems.append(Problem(f"expected valid Unicode text, received a lone surrogate escape in {shown!r}",
                                    file, *_position(node.start_mark), path=path_text(path) or None))
            return _REFUSED
        return value

    active, count = set(), [0]  # collection nodes being built (an alias may point back into one); values built

    def build(node, path):
        marks.values[path] = _position(node.start_mark)
        count[0] += 1
        if count[0] > MAX_VALUES:  # aliases can make a short file expand exponentially ("billion laughs")
            raise SpecError(Problem(f"expected a spec of at most {MAX_VALUES} values with its aliases (*name) expanded, received more",
                                    file, *_position(node.start_mark), path=path_text(path) or None))
        if refuse_tag(node, path):
            return None
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            if len(path) >= MAX_DEPTH:
                problems.append(Problem(f"expected at most {MAX_DEPTH} levels of nesting, received deeper", file,
                                        *_position(node.start_mark), path=path_text(path) or None))
                return None
            if id(node) in active:
                problems.append(Problem("expected an alias to a finished value, received an alias to a value that contains it (a loop)",
                                        file, *_position(node.start_mark), path=path_text(path) or None))
                return None
            active.add(id(node))
            try:
                return collection(node, path)
            finally:
                active.discard(id(node))
        value = scalar(node, path)
        return None if value is _REFUSED else value

    def collection(node, path):
        if isinstance(node, yaml.MappingNode):
            result = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    problems.append(Problem("expected a plain key, received a complex key", file, *_position(key_node.start_mark)))
                    continue
                if key_node.tag == _TAG + "merge":
                    problems.append(Problem("expected plain keys, received a YAML merge key '<<'", file, *_position(key_node.start_mark)))
                    continue
                if refuse_tag(key_node, path):
                    continue
                key = scalar(key_node, path)
                if key is _REFUSED:
                    continue
                if not isinstance(key, str):
                    key = describe(key) if key is None or isinstance(key, bool) else str(key)
                if key in result:
                    first = marks.keys[path + (key,)]
                    problems.append(
                        Problem(
                            f"expected each key once, received {key!r} again (first at line {first[0]})",
                            file, *_position(key_node.start_mark), path=path_text(path + (key,)),
                        )
                    )
                    continue
                marks.keys[path + (key,)] = _position(key_node.start_mark)
                result[key] = build(value_node, path + (key,))
            return result
        return [build(item, path + (i,)) for i, item in enumerate(node.value)]

    data = build(root, ())
    if problems:
        raise SpecError(problems)
    if not isinstance(data, dict):
        raise SpecError(Problem(f"expected a mapping of spec keys, received {type(data).__name__}", file, 1, 1))
    return data, marks


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def path_text(path: tuple) -> str:
    """('layers', 2, 'units') -> 'layers[2].units'."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
