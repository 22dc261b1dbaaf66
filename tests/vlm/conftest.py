"""VLM tests run tiny models: one torch thread is faster for them, and much faster on a shared
CPU (two threads spin on each other's tiny ops: 0.1 s vs 2–7 s for a one-step run, measured)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
