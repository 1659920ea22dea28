"""Codes for users the model never saw, from the items given in the request (inductive cold start).

The bundle's cold-start section is the encoder (``index.cold_start``); serving only chooses the ego embedding.
A zero ego is the default, even for hashed models: on ml-100k's held-out users the decoded ego of a raw-row code
the decoder never trained on cost more than it gave (92 % of trained-on with a zero ego, 51 % with it); on Gowalla
with 3-hop codes the two tie (97 % each; BENCHMARKS.md), since the propagated layers carry the answer.
``use_hashed_ego`` decodes the user's hash code instead, as Yeh et al. do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from index.cold_start import ColdStartSection


@dataclass(frozen=True)
class ColdStart:
    section: ColdStartSection
    use_hashed_ego: bool = False

    def code(self, items: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        """The user's code row, in the bundle's user layout."""
        return self.section.code(items, hashed_ego=self.use_hashed_ego)
