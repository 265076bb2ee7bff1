import os
import sys

import pytest
import torch

# Nothing may be downloaded during tests: hub look-ups fail at once instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# Tests import the flat scripts from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The test models are tiny: a second thread only waits for the first, and on a busy
    machine waits long (torchrun runs in tests get OMP_NUM_THREADS=1 likewise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
