"""What a run measures besides its metrics: stepping throughput and the GPU's peak memory."""

from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class Throughput:
    """BPR triples per second of stepping, all ranks together.

    Counted over the epochs after a run's first: that one also pays one-time start-up (CUDA-graph warm-up and
    capture, cuSPARSE/NCCL set-up, ranks arriving at the first all-reduce apart), and is reported apart.
    """

    first_epoch_seconds: float = 0.0
    first_epoch_samples: int = 0
    seconds: float = 0.0
    samples: int = 0
    epochs: int = 0

    def add(self, seconds: float, samples: int) -> None:
        if self.epochs == 0:
            self.first_epoch_seconds, self.first_epoch_samples = seconds, samples
        else:
            self.seconds, self.samples = self.seconds + seconds, self.samples + samples
        self.epochs += 1

    @property
    def samples_per_second(self) -> float:
        """Over the later epochs; over the first when it was the only one."""
        if self.seconds:
            return self.samples / self.seconds
        return self.first_epoch_samples / max(self.first_epoch_seconds, 1e-9)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device, *, reserved: bool = False) -> float:
    """The most GPU memory allocated since ``reset_peak_memory`` (0 on the CPU); ``reserved``: the most the caching
    allocator held, which is what the card sees of this process (less the CUDA context) and what another process
    on the card cannot have. Tensors need the first; fitting beside other work needs the second."""
    if device.type != "cuda":
        return 0.0
    peak = torch.cuda.max_memory_reserved(device) if reserved else torch.cuda.max_memory_allocated(device)
    return peak / 2**20


def host_peak_gib() -> float:
    """This process's largest resident set so far, GiB (Linux counts ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class PhaseClock:
    """Wall seconds of each phase of a run, for its record: where the time of a large run goes; and the host
    memory peak when each phase ended, which is where memory went (a peak that rose during a phase was that phase's)."""

    def __init__(self, logged_as: str | None = None) -> None:
        """``logged_as``: log each phase as it ends under this name, so a run stopped midway shows where it was."""
        self.phases: dict[str, float] = {}
        self.host_peaks: dict[str, float] = {}  # GiB, host_peak_gib at each phase's end
        self._since = time.perf_counter()
        self._logged_as = logged_as

    def done(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = round(now - self._since, 1)
        self.host_peaks[phase] = round(host_peak_gib(), 2)
        self._since = now
        if self._logged_as:
            log.info("%s: %s took %.1f s (host peak so far %.2f GiB)", self._logged_as, phase, self.phases[phase],
                     self.host_peaks[phase])  # fmt: skip
