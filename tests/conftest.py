"""Shared fixtures: build a Session from a spec written as a Python dict (dumped to YAML)."""
from __future__ import annotations

import itertools

import pytest
import yaml

from nnctl.backend import get_backend
from nnctl.spec import load_spec
from nnctl.training import Session


@pytest.fixture
def make_session(tmp_path):
    """make_session(spec_dict, dtype="float64", weights=None) -> Session on the NumPy backend.

    Each call writes its spec to a fresh YAML file under tmp_path and goes the whole way through
    `load_spec`, as the CLI does.
    """
    counter = itertools.count()

    def make(spec: dict, dtype: str = "float64", weights: dict | None = None) -> Session:
        path = tmp_path / f"spec_{next(counter)}.yaml"
        path.write_text(yaml.safe_dump({"dtype": dtype, **spec}, sort_keys=False), encoding="utf-8")
        return Session(load_spec(path), get_backend("numpy"), weights=weights, dtype=dtype)

    return make
