"""Shared fixtures for transforms tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convs: intra-op threads only add sync overhead on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
