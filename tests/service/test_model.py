"""How a failed model load is told: one line, and whether the bundle is at fault."""

from __future__ import annotations

import numpy as np
import pytest

from service.model import ModelLoadError


def test_a_failed_allocation_is_one_line_and_may_pass() -> None:
    with pytest.raises(MemoryError) as caught:
        np.empty(10**14, np.int64)  # what a catalogue larger than the host would ask for
    error = ModelLoadError.of(caught.value)
    assert str(error).startswith("out of memory (Unable to allocate") and "\n" not in str(error)
    assert not error.refused  # memory may be freed: a reload is retried, the bundle is not blamed
