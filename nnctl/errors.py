"""The one family of errors nnctl reports, and the exit codes they end with.

Everything the user gave us (a spec, a data file, a weights file, a flag) that is wrong raises an
`NnctlError` (exit code 2); a training run that diverges is one too (exit code 1). The CLI turns
each into one message and its `exit_code` in one place. Anything else that escapes is a bug in
nnctl and is reported as such. Messages say "expected ..., received ...".
"""
from __future__ import annotations

from typing import NamedTuple


def describe(value) -> str:
    """How a received value is shown in a message: short, typed, unambiguous."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57] + "...")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        text = repr(list(value))
        return text if len(text) <= 60 else f"a list of {len(value)} items"
    return repr(value)


def number_text(value) -> str:
    """A data value as the user would write it: 3, 1.5, nan, 1e+39 (not np.float64(3.0), nor 1e39's
    forty digits)."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e16 else repr(value)


def shape_text(shape, batch: bool = True) -> str:
    """A shape as Keras prints it: (None, 2) with the batch axis, (2, 1) or (3,) without."""
    dims = (["None"] if batch else []) + ["None" if n is None else str(n) for n in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def file_kind(mode: int) -> str:
    """What a path that is not a regular file is, from its st_mode: 'a directory', 'a FIFO', ..."""
    import stat

    kinds = [(stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return next((text for test, text in kinds if test(mode)), "a special file")


def did_you_mean(word, choices) -> str:
    """' (did you mean 'x'?)' for the nearest choice, or '' when nothing is close."""
    if not isinstance(word, str):
        return ""
    choices = [str(c) for c in choices]
    folded = {c.casefold(): c for c in reversed(choices)}  # the first choice wins a tie
    if word.casefold() in folded and folded[word.casefold()] != word:
        return f" (did you mean {folded[word.casefold()]!r}?)"
    import difflib  # here: only a misspelling needs it, and every command's start-up pays for imports

    close = difflib.get_close_matches(word.casefold(), list(folded), n=1, cutoff=0.6)
    return f" (did you mean {folded[close[0]]!r}?)" if close else ""


class Problem(NamedTuple):
    """One thing wrong, with where it is: file, line and column (1-based), and a key path."""

    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        place = ""
        if self.file:
            place = self.file
            if self.line is not None:
                place += f":{self.line}"
                if self.column is not None:
                    place += f":{self.column}"
        parts = [p for p in (place, self.path) if p]
        return ": ".join(parts + [self.message])


EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class NnctlError(Exception):
    """Bad input from the user. Carries one or more problems; exit code 2."""

    exit_code = EXIT_BAD_INPUT
    kind = "error"

    def __init__(self, problems):
        if isinstance(problems, (str, Problem)):
            problems = [problems]
        self.problems = [p if isinstance(p, Problem) else Problem(p) for p in problems]
        super().__init__("\n".join(str(p) for p in self.problems))


class SpecError(NnctlError):
    kind = "spec error"


class DataError(NnctlError):
    kind = "data error"


class WeightsError(NnctlError):
    kind = "weights error"


class CheckpointError(NnctlError):
    """A checkpoint that cannot be resumed: missing, damaged, or of another spec or data."""

    kind = "checkpoint error"


class BackendError(NnctlError):
    kind = "backend error"


class UsageError(NnctlError):
    """A flag or file argument that cannot be used as given (an existing --out, a wrong suffix)."""

    kind = "usage error"


class MissingTool(NnctlError):
    """An external program a command needs (Graphviz's dot) is not installed."""

    kind = "missing tool"


class TrainingDiverged(NnctlError):
    """The loss or a gradient became NaN or inf: exit code 1, a failed run rather than bad input."""

    exit_code = EXIT_FAILED
    kind = "training diverged"


class FileSystemError(NnctlError):
    """A file nnctl must write cannot be: a full disk, a read-only or missing folder, a file where
    a folder should be, no permission. What the user's machine refused, not a bug in nnctl."""

    kind = "file error"


class SweepError(NnctlError):
    """A sweep file that cannot run: a bad key, a parameter path the spec lacks, a value its options refuse."""

    kind = "sweep error"


class MissingExtra(NnctlError):
    """An optional extra a command needs (Optuna for `nnctl sweep`) is not installed."""

    kind = "missing extra"
