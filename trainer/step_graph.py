"""A training step replayed as one CUDA graph.

LightGCN's step on a GPU is bound by the host: its kernels (three sparse propagations forward and back, the
BPR loss, Adam) take less time on the device than Python takes to launch them, and under data parallelism every
rank also waits at each all-reduce for the other rank's host jitter (benchmarks/ddp_step_probe.py). Captured once,
a step is a single graph launch: the GPU runs back to back and ranks meet only on the device. Steps whose batch is
not the captured size (an epoch's last, partial batch), and steps before the capture (warm-up: lazy allocations,
cuBLAS/cuSPARSE handles, NCCL's communicator), run eagerly; the graph is captured again when a host value baked
into it changes: the learning rate (a Python float in Adam's kernels) or a quantizer's constant (HQ's δ after a
refresh).

Memory: a captured graph keeps its step's intermediate buffers in a private pool that no eager work can use, and
PyTorch's caching allocator keeps freed blocks per stream. At a graph of tens of millions of nodes a step's buffers
are tens of GB, so eager work beside a live pool (an epoch's last, partial batch, which propagates the whole graph
like any step; a quantizer's refresh; a validation) needs room for both, and warm-ups on streams of their own
cached a step's worth each. Hence one stream for the warm-ups and the captures, and ``release``: the pool handed
back before validation and export always, and before other eager work when it is large (``LARGE_POOL``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from trainer.config import RuntimeConfig
from trainer.distributed import World
from trainer.quantization import Quantizer

log = logging.getLogger(__name__)

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

WARMUP_STEPS = 3  # PyTorch's guidance: a few eager iterations on a side stream before capturing
# A pool worth handing back before an eager step or a refresh: below it the re-capture that follows costs more
# than the memory is worth (a Gowalla step's pool is a few hundred MB; a 10M graph's, about 20 GB).
LARGE_POOL = 1 << 30


class GraphedStep:
    """Runs ``step(users, positives, negatives) -> loss`` eagerly or by replaying its captured graph.

    ``step`` must zero the gradients with ``set_to_none=True`` first, run forward, backward, any gradient
    all-reduce and the optimizer step, and have no host synchronisation or data-dependent shapes; the
    optimizer must be built with ``capturable=True``. Results equal the eager steps' (same kernels).
    """

    def __init__(
        self,
        step: Step,
        optimizer: torch.optim.Optimizer,
        batch_size: int,
        device: torch.device,
        constants: Callable[[], tuple[float, ...]] = tuple,
    ) -> None:
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.step = step
        self.optimizer = optimizer
        self.constants = constants
        self.batch_size = batch_size
        self.device = device
        self.inputs = tuple(torch.zeros(batch_size, dtype=torch.long, device=device) for _ in range(3))
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None
        self.captured_for: tuple[float, ...] | None = None  # the host values baked into the graph
        self.pool_bytes = 0  # what the live graph's capture reserved
        self.side: torch.cuda.Stream | None = None  # warm-ups' and captures': the allocator caches blocks per stream
        self.warm = 0
        self.replays = 0
        self.failed = False  # a capture failed: every step runs eagerly

    def _hyperparameters(self) -> tuple[float, ...]:
        return (*(float(group["lr"]) for group in self.optimizer.param_groups), *self.constants())

    def __call__(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        if users.numel() != self.batch_size or self.failed:
            self.release_if_large()  # an eager step needs a step's room, which the pool holds for nothing
            return self.step(users, positives, negatives)
        if self.warm < WARMUP_STEPS:
            return self._warm_up(users, positives, negatives)
        if (self.graph is None or self.captured_for != self._hyperparameters()) and not self._capture():
            return self.step(users, positives, negatives)
        for static, batch in zip(self.inputs, (users, positives, negatives), strict=True):
            static.copy_(batch, non_blocking=True)
        assert self.graph is not None and self.loss is not None
        self.graph.replay()
        self.replays += 1
        return self.loss

    def _stream(self) -> torch.cuda.Stream:
        """One side stream for every warm-up and capture: blocks, and cuBLAS's workspace, are kept per stream."""
        if self.side is None:
            self.side = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        return self.side

    def _warm_up(self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        side = self._stream()
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            loss = self.step(users, positives, negatives)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.warm += 1
        return loss

    def release(self) -> None:
        """Drop the captured graph and give its pool, and every block the allocator caches, back to the device.

        The next full-size step captures again (one step's time). Gradients go too: they are allocated inside
        the pool, and the step zeroes them first anyway.
        """
        torch.cuda.synchronize(self.device)  # no replay may still run on what is freed
        self.graph = None
        self.loss = None
        self.pool_bytes = 0
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.device(self.device):
            torch.cuda.empty_cache()

    def release_if_large(self) -> None:
        """``release`` when a live graph's pool is at least ``LARGE_POOL``: before eager work of a step's size."""
        if self.graph is not None and self.pool_bytes >= LARGE_POOL:
            self.release()

    def _capture(self) -> bool:
        """Capture the step; False (and eager steps from then on) when an operation in it cannot be captured."""
        self.release()  # the old graph's pool and the warm-ups' cache, before the new pool is filled
        reserved = torch.cuda.memory_reserved(self.device)
        graph = torch.cuda.CUDAGraph()
        # Our own capture stream, entered outside the graph's context: when capture fails, torch.cuda.graph
        # raises from capture_end before restoring the stream, and the outer context still restores it (the
        # failed stream, whose allocations may still go to the graph's pool, is never used again: after a
        # failure every step runs eagerly on the current stream).
        capture = self._stream()
        capture.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(capture):
                # thread_local: NCCL's watchdog thread may query its events while this thread captures.
                with torch.cuda.graph(graph, stream=capture, capture_error_mode="thread_local"):
                    self.loss = self.step(*self.inputs).detach()
        except RuntimeError as error:  # e.g. a kernel that waits on the host (nothing captured ran)
            self.failed = True
            self.optimizer.zero_grad(set_to_none=True)
            log.warning("training steps run eagerly: the step could not be captured as a CUDA graph (%s)",
                        str(error).splitlines()[0] if str(error) else type(error).__name__)  # fmt: skip
            return False
        self.graph = graph
        self.pool_bytes = torch.cuda.memory_reserved(self.device) - reserved
        self.captured_for = self._hyperparameters()
        log.debug("captured the training step (batch %d, lr %s)", self.batch_size, self.captured_for)
        return True


def step_graph_applies(runtime: RuntimeConfig, quantizer: Quantizer, device: torch.device, world: World) -> bool:
    """CUDA-graph steps need a CUDA device, a quantizer without host syncs, and no DDP (its hooks run on the host)."""
    return (
        runtime.cuda_graph
        and device.type == "cuda"
        and quantizer.capturable
        and not (world.distributed and runtime.grad_sync == "ddp")
    )


def match_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Set Adam's ``capturable`` after loading a state saved by another kind of run; its step counters move to
    where that mode keeps them (the parameter's device when capturable, the host otherwise)."""
    for group in optimizer.param_groups:
        group["capturable"] = capturable
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            if isinstance(state.get("step"), torch.Tensor):
                where = parameter.device if capturable else torch.device("cpu")
                state["step"] = state["step"].to(device=where, dtype=torch.float32)
