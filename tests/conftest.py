"""Shared fixtures: build a Session from a spec written as a Python dict (dumped to YAML)."""
from __future__ import annotations

import itertools

import pytest
import yaml

from nnctl.core.backend import get_backend
from nnctl.errors import BackendError
from nnctl.spec.load import load_spec
from nnctl.train.session import Session


def _cupy_missing() -> str | None:
    """Why the CuPy backend cannot run here (None when it can): CuPy or a GPU is missing."""
    try:
        get_backend("cupy")
    except BackendError as exc:
        return str(exc)
    return None


CUPY_MISSING = _cupy_missing()
BACKENDS = ["numpy", pytest.param("cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(CUPY_MISSING is not None, reason=str(CUPY_MISSING))])]


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each backend in turn; the CuPy half skips with its reason on a machine without a GPU."""
    return get_backend(request.param)


@pytest.fixture
def make_session(tmp_path):
    """make_session(spec_dict, dtype="float64", weights=None, backend=None) -> Session (NumPy by default).

    Each call writes its spec to a fresh YAML file under tmp_path and goes the whole way through
    `load_spec`, as the CLI does.
    """
    counter = itertools.count()

    def make(spec: dict, dtype: str = "float64", weights: dict | None = None, backend=None) -> Session:
        path = tmp_path / f"spec_{next(counter)}.yaml"
        path.write_text(yaml.safe_dump({"dtype": dtype, **spec}, sort_keys=False), encoding="utf-8")
        return Session(load_spec(path), backend or get_backend("numpy"), weights=weights, dtype=dtype)

    return make
