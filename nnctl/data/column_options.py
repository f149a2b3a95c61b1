"""The options of a column's preprocessing (nnctl.data.preprocessing), as the spec declares them.

Apart from the transforms so that reading a spec (and `nnctl summary`) needs no NumPy.
"""
from __future__ import annotations

from nnctl.options import Check, Option, integer, one_of, optional, text

KINDS = ("auto", "numeric", "category", "binary")
NORMALIZATIONS = ("none", "zscore", "minmax")
MISSING = ("error", "mean", "median", "most_frequent", "constant", "drop")
ENCODINGS = ("one_hot", "index")
UNKNOWN = ("error", "ignore", "bucket")
# A binary column's positive value when the spec names none: the usual words for yes, in any case.
POSITIVE_WORDS = ("1", "yes", "y", "true", "t", "positive", "pos")

_VALUE = Check("a number or a string", lambda v: isinstance(v, (int, float, str)) and not isinstance(v, bool),
               {"type": ["number", "string"]})
_VOCABULARY = Check("a non-empty list of distinct strings",
                    lambda v: isinstance(v, list) and bool(v) and all(isinstance(t, str) for t in v) and len(set(v)) == len(v),
                    {"type": "array", "items": {"type": "string"}, "minItems": 1, "uniqueItems": True})

COLUMN_OPTIONS = {
    "type": Option(one_of(KINDS), "auto", "auto: numeric when every value is a number, binary for two values, else category"),
    "normalize": Option(one_of(NORMALIZATIONS), "none", "numeric: zscore (x - mean) / std, minmax (x - min) / (max - min), from the training rows"),
    "missing": Option(one_of(MISSING), "error", "what a missing cell gets: error, mean, median, most_frequent, constant (fill_value), or drop (the row)"),
    "fill_value": Option(optional(_VALUE), None, "the value of a missing cell under missing: constant"),
    "encode": Option(one_of(ENCODINGS), "one_hot", "category: one_hot (one input per token) or index (one input, for an embedding layer)"),
    "unknown": Option(one_of(UNKNOWN), "ignore", "category: a value never seen in training is an error, all zeros (ignore), or its own bucket"),
    "vocabulary": Option(optional(_VOCABULARY), None, "category: the tokens, in order (null: learned from the training rows, most frequent first)"),
    "max_tokens": Option(optional(integer(1)), None, "category: the most distinct values the column may have (null: any number)"),
    "min_frequency": Option(integer(1), 1, "category: keep learned tokens seen at least this often"),
    "positive": Option(optional(text), None, "binary: the value that is 1 (null: yes/true/1 and the like, else the second in sorted order)"),
}
