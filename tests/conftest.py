"""Test-session settings.

The suite runs many tiny convolutions; on a 2-core machine OpenMP worker threads mostly wait on each
other there (measured 10-20x slower under load), so tests run torch single-threaded. Subprocess
tests (DDP) set their own thread count.
"""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
