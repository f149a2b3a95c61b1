"""YAML reading that keeps every node's position and rejects what plain YAML would swallow.

Safe tags only (no Python objects), no duplicate keys, string keys only. Returns plain Python
data plus a table of positions keyed by path tuples (("layers", 2, "units") -> line, column).
"""
from __future__ import annotations

import yaml

from nnctl.errors import Problem, SpecError


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


_SCALARS = yaml.SafeLoader  # its resolver and constructor decide a scalar's type


def _position(mark) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


def load_yaml(text: str, file: str):
    """Parse `text`; raise SpecError listing every structural problem at once."""
    marks = Marks(file)
    problems: list[Problem] = []
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, column = _position(mark) if mark else (None, None)
        reason = getattr(exc, "problem", None) or str(exc)
        raise SpecError(Problem(f"expected valid YAML, received a syntax error: {reason}", file, line, column)) from None
    if root is None:
        raise SpecError(Problem("expected a YAML mapping of spec keys, received an empty file", file))
    constructor = yaml.SafeLoader("")

    def build(node, path):
        marks.values[path] = _position(node.start_mark)
        if isinstance(node, yaml.MappingNode):
            result = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    problems.append(Problem("expected a plain key, received a complex key", file, *_position(key_node.start_mark)))
                    continue
                key = constructor.construct_object(key_node) if key_node.tag != "tag:yaml.org,2002:merge" else "<<"
                if key == "<<":
                    problems.append(Problem("expected plain keys, received a YAML merge key '<<'", file, *_position(key_node.start_mark)))
                    continue
                if not isinstance(key, str):
                    key = str(key)
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
        if isinstance(node, yaml.SequenceNode):
            return [build(item, path + (i,)) for i, item in enumerate(node.value)]
        try:
            return constructor.construct_object(node)
        except yaml.YAMLError:
            problems.append(
                Problem(f"expected a plain value, received a value tagged {node.tag!r}", file, *_position(node.start_mark), path=path_text(path) or None)
            )
            return None

    data = build(root, ())
    if problems:
        raise SpecError(problems)
    if not isinstance(data, dict):
        raise SpecError(Problem(f"expected a mapping of spec keys, received {type(data).__name__}", file, 1, 1))
    return data, marks


def path_text(path: tuple) -> str:
    """('layers', 2, 'units') -> 'layers[2].units'."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
