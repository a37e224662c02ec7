"""Fixtures shared by the test modules: one intra-op thread for the whole session, and the tiny VAT dataset
of the training tests (``vat``, opt-in)."""

from __future__ import annotations

import pytest
import torch

from .helpers import make_tiny_vat


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny CPU models on a shared machine: one intra-op thread is much faster than two contended ones (the
    whole suite on the loaded 2-core box: 464 s with it against 596 s without, over four paired runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_blas_thread():
    """numpy's OpenBLAS on one thread for a module, like torch above: on the loaded 2-core machine the 2048-d
    eigendecompositions of FID took about 2 s with one thread against 9 s with contended ones. Modules that
    need it say ``pytestmark = pytest.mark.usefixtures("one_blas_thread")``."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def vat(tmp_path_factory):
    """The tiny VAT dataset of :func:`tests.helpers.make_tiny_vat` (two 8-frame 16x16 clips per split), written
    once per module."""
    return make_tiny_vat(tmp_path_factory.mktemp("vat"))
