"""Device choice: CUDA when present, the CPU otherwise, and a clear error for impossible requests."""

import pytest
import torch

from napari_cycleulm.device import resolve_device
from napari_cycleulm.errors import CycleULMError


def test_auto_picks_cuda_only_when_available():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device().type == expected
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_it_is_explained():
    with pytest.raises(CycleULMError, match="CUDA is not available"):
        resolve_device("cuda")
