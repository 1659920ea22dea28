from __future__ import annotations

import dataclasses

import pytest
import torch

from trainer.config import RuntimeConfig, TrainConfig
from trainer.data import Dataset
from trainer.distributed import World
from trainer.quantization import make_quantizer
from trainer.step_graph import GraphedStep, Step, match_capturable, step_graph_applies
from trainer.train import train

CUDA = torch.device("cuda")


def test_graphed_steps_need_a_cuda_device() -> None:
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedStep(lambda u, p, n: u.float().sum(), optimizer, 8, torch.device("cpu"))


def test_steps_are_graphed_only_on_a_gpu_without_ddp_for_quantizers_without_host_syncs() -> None:
    config = RuntimeConfig()
    fp, gnaq = make_quantizer("fp", 8, 2), make_quantizer("gnaq", 8, 2)
    two_ranks = World(rank=0, size=2)
    assert step_graph_applies(config, fp, CUDA, World())
    assert step_graph_applies(config, fp, CUDA, two_ranks)  # the plain all-reduce is captured with the step
    assert not step_graph_applies(config, fp, torch.device("cpu"), World())
    assert not step_graph_applies(dataclasses.replace(config, grad_sync="ddp"), fp, CUDA, two_ranks)
    assert step_graph_applies(dataclasses.replace(config, grad_sync="ddp"), fp, CUDA, World())
    assert not step_graph_applies(config, gnaq, CUDA, World())  # re-binning after each step
    assert not step_graph_applies(dataclasses.replace(config, cuda_graph=False), fp, CUDA, World())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "method",
    [
        {"method": "fp", "lr_milestones": (2,)},  # a learning-rate decay mid-run: the graph must be captured again
        # Capturable Adam computes its bias corrections on the device in float32, the eager one on the host in
        # float64: ~1e-6 apart after two epochs, which sign codes amplify into flipped bits a few epochs later.
        {"method": "ste", "epochs": 2},
        {"method": "hq", "bits": 1},  # δ refreshed every 5 epochs: a host constant of the captured step
        {"method": "fp", "input_layer": "hash"},
    ],
    ids=["fp-lr-decay", "ste", "hq1", "hash-fp"],
)
def test_graph_replayed_training_equals_eager_training(tiny_data: Dataset, method: dict[str, object]) -> None:
    # No validation: every run keeps its last epoch, so the three runs are compared after the same steps.
    config = TrainConfig.of(dim=16, epochs=7, eval_every=0, batch_size=256, lr=5e-3, device="cuda")
    config = config.with_options(**method)  # type: ignore[arg-type]
    graphed = train(tiny_data, config)
    eager = train(tiny_data, config.with_options(cuda_graph=False))
    other_seed = train(tiny_data, config.with_options(cuda_graph=False, seed=config.optim.seed + 1))
    assert graphed.cuda_graph and not eager.cuda_graph
    full_batches = tiny_data.train.nnz // config.optim.batch_size
    assert graphed.graphed_steps == config.schedule.epochs * full_batches - 3  # all but the warm-up steps
    assert eager.graphed_steps == 0
    for (name, a), b, c in zip(
        graphed.model.state_dict().items(), eager.model.state_dict().values(), other_seed.model.state_dict().values(),
        strict=True,
    ):  # fmt: skip
        if not a.is_floating_point():
            continue
        same = (a - b).abs().max().item()
        assert same < 1e-4 and same < (c - b).abs().max().item() / 100, (name, same)


def test_a_resumed_optimizer_takes_this_runs_capturable_mode() -> None:
    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.Adam([parameter], lr=0.1)
    parameter.sum().backward()
    optimizer.step()  # an eager run's state: the step counter on the host
    saved = optimizer.state_dict()
    resumed = torch.optim.Adam([parameter], lr=0.1, capturable=True)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["capturable"] is False  # what load_state_dict alone leaves
    match_capturable(resumed, True)
    step = resumed.state[parameter]["step"]
    assert resumed.param_groups[0]["capturable"] is True
    assert step.dtype == torch.float32 and step.device == parameter.device and float(step) == 1.0
    match_capturable(resumed, False)
    assert resumed.param_groups[0]["capturable"] is False and resumed.state[parameter]["step"].device.type == "cpu"


def big_step(optimizer: torch.optim.Optimizer, parameter: torch.nn.Parameter, width: int) -> Step:
    """A step whose intermediates are ``width`` floats per batch row: large next to everything else it holds."""

    def step(users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        wide = parameter[users, None] * torch.ones(width, device=parameter.device)
        loss = (wide.relu() * parameter[positives, None]).mean() - parameter[negatives].mean()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        return loss.detach()

    return step


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_warm_ups_share_a_stream_and_release_hands_the_pool_back() -> None:
    batch, width = 4096, 8192  # an intermediate of 128 MiB
    intermediate = batch * width * 4
    parameter = torch.nn.Parameter(torch.rand(batch, device=CUDA))
    optimizer = torch.optim.Adam([parameter], lr=1e-3, capturable=True)
    step = big_step(optimizer, parameter, width)
    ids = torch.randperm(batch, device=CUDA)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    step(ids, ids, ids)  # one eager step on this stream: what a step needs reserved
    torch.cuda.synchronize()
    one_step = torch.cuda.max_memory_reserved()
    graphed = GraphedStep(step, optimizer, batch, CUDA)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(3):  # the warm-ups
        graphed(ids, ids, ids)
    torch.cuda.synchronize()
    # One stream's cache is reused step after step; a stream of its own per warm-up kept three steps' worth.
    assert torch.cuda.max_memory_reserved() < 1.5 * one_step, (torch.cuda.max_memory_reserved(), one_step)
    losses = [float(graphed(ids, ids, ids)) for _ in range(3)]
    assert graphed.graph is not None and graphed.replays == 3
    held = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    assert held >= intermediate  # the graph's pool: freed buffers nothing else may use
    graphed.release()
    assert graphed.graph is None
    assert torch.cuda.memory_reserved() - torch.cuda.memory_allocated() < intermediate / 4
    after = [float(graphed(ids, ids, ids)) for _ in range(3)]  # captured again, and the same step
    assert graphed.graph is not None and graphed.replays == 6
    assert all(a != b for a, b in zip(losses, losses[1:], strict=False))  # the steps do move the parameter
    assert len(after) == 3 and all(torch.isfinite(torch.tensor(after)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("large", [False, True])
def test_an_eager_partial_batch_releases_a_large_pool_only(monkeypatch: pytest.MonkeyPatch, large: bool) -> None:
    batch, width = 4096, 2048
    parameter = torch.nn.Parameter(torch.rand(batch, device=CUDA))
    optimizer = torch.optim.Adam([parameter], lr=1e-3, capturable=True)
    graphed = GraphedStep(big_step(optimizer, parameter, width), optimizer, batch, CUDA)
    ids = torch.randperm(batch, device=CUDA)
    for _ in range(4):  # three warm-ups, then the capture
        graphed(ids, ids, ids)
    assert graphed.graph is not None and graphed.pool_bytes >= batch * width * 4  # the step's intermediate
    monkeypatch.setattr("trainer.step_graph.LARGE_POOL", 1 if large else 1 << 50)
    graphed(ids[:100], ids[:100], ids[:100])  # an epoch's last batch: eager
    assert (graphed.graph is None) == large
    graphed(ids, ids, ids)
    assert graphed.graph is not None and graphed.replays == 2  # captured again where it was released


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphed_training_with_validation_releases_the_graph_and_keeps_replaying(tiny_data: Dataset) -> None:
    config = TrainConfig.of(dim=16, epochs=6, eval_every=1, patience=100, batch_size=256, device="cuda")
    result = train(tiny_data, config)
    full_batches = tiny_data.train.nnz // config.optim.batch_size
    assert result.cuda_graph and result.graphed_steps == config.schedule.epochs * full_batches - 3
    assert result.peak_gpu_reserved_mb >= result.peak_gpu_mb > 0
