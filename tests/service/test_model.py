"""How a failed model load is told: one line, and whether the bundle is at fault."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.model import ModelLoader, ModelLoadError
from service.settings import ServiceSettings


def test_a_failed_allocation_is_one_line_and_may_pass() -> None:
    with pytest.raises(MemoryError) as caught:
        np.empty(10**14, np.int64)  # what a catalogue larger than the host would ask for
    error = ModelLoadError.of(caught.value)
    assert str(error).startswith("out of memory (Unable to allocate") and "\n" not in str(error)
    assert not error.refused  # memory may be freed: a reload is retried, the bundle is not blamed


def test_every_loader_warms_up_to_the_fetch_the_settings_name(tmp_path: Path) -> None:
    """A worker's index and the search process's take RECSYS_WARM_MAX_FETCH (the search process at every worker's
    batch size) and the default k a reach from the bundle starts at; the server's own check warms nothing."""
    settings = ServiceSettings(bundle_root=tmp_path, warm_max_fetch=4096, workers=4, batch_max_size=32, default_k=50)
    worker, searcher = ModelLoader.for_worker(settings), ModelLoader.for_search_process(settings)
    assert (worker.warm_batch, worker.warm_max_fetch, worker.warm_k) == (32, 4096, 50)
    assert (searcher.warm_batch, searcher.warm_max_fetch, searcher.warm_k) == (128, 4096, 50)
    assert ModelLoader.for_check(settings).warm_batch == 0
    assert ServiceSettings(bundle_root=tmp_path).warm_max_fetch == 0  # the bundle's reach
