"""Ranking distillation: the teacher's lists skip seen items, the KL vanishes only when the student agrees."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.config import TrainConfig
from trainer.data import Dataset
from trainer.distillation import DistillationConfig, RankingDistillation, load_teacher
from trainer.graph import normalized_adjacency, to_torch_sparse
from trainer.train import train
from trainer.warm_start import SavedStage, WarmStartError, save_stages


def test_teacher_lists_are_its_best_unseen_items(tmp_path: Path, tiny_data: Dataset) -> None:
    """The teacher is its fp model propagated over the run's graph; its lists skip each user's training items."""
    result = train(tiny_data, TrainConfig.of(method="fp", dim=8, epochs=4, eval_every=2, batch_size=1024, device="cpu"))
    path = tmp_path / "fp.pt"
    save_stages(path, tiny_data.name, {"select": SavedStage(ego=result.model.inputs().detach(), seconds=1.0, epochs=4)})
    adjacency = to_torch_sparse(normalized_adjacency(tiny_data.train), torch.device("cpu"))
    teacher = load_teacher(DistillationConfig(path, top=5), "select", dataset=tiny_data.name,
                           n_users=tiny_data.n_users, adjacency=adjacency, layers=3, seen=tiny_data.train)  # fmt: skip
    represented = result.model.layer_mean().detach()
    assert torch.allclose(teacher.teacher_items, represented[tiny_data.n_users :], atol=1e-5)
    scores = teacher.teacher_users @ teacher.teacher_items.T
    for user in range(tiny_data.n_users):
        seen = set(tiny_data.train.indices[tiny_data.train.indptr[user] : tiny_data.train.indptr[user + 1]].tolist())
        top = teacher.top_items[user].tolist()
        assert not seen & set(top)
        unseen = torch.tensor(sorted(set(range(tiny_data.n_items)) - seen))
        best = torch.topk(scores[user, unseen], 5).values
        assert torch.allclose(scores[user, top].sort(descending=True).values, best, atol=1e-5)


def distiller(top: int = 2) -> RankingDistillation:
    torch.manual_seed(0)
    teacher_users, teacher_items = torch.randn(3, 4), torch.randn(6, 4)
    top_items = torch.topk(teacher_users @ teacher_items.T, top, dim=1).indices
    return RankingDistillation(teacher_users, teacher_items, top_items, DistillationConfig(Path("t.pt"), top=top))


def test_kl_is_zero_for_the_teacher_itself_and_positive_otherwise() -> None:
    d = distiller()
    users, negatives = torch.tensor([0, 1, 2]), torch.tensor([4, 5, 0])
    same = d(
        users, d.teacher_users[users], d.teacher_items[d.top_items[users]], negatives, d.teacher_items[negatives], 1.0
    )
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    student_items = torch.randn(6, 4, requires_grad=True)
    other = d(
        users, d.teacher_users[users], student_items[d.top_items[users]], negatives, student_items[negatives], 1.0
    )
    assert other.item() > 1e-3
    other.backward()
    assert student_items.grad is not None and student_items.grad.abs().sum() > 0


def test_distillation_lifts_a_binary_student_towards_its_teacher(tmp_path: Path, tiny_data: Dataset) -> None:
    """Trained with the teacher's lists, sign codes rank closer to the teacher than trained without."""
    base = TrainConfig.of(method="fp", dim=16, epochs=30, eval_every=5, batch_size=1024, lr=1e-2, device="cpu")
    teacher = train(tiny_data, base)
    path = tmp_path / "fp.pt"
    stage = SavedStage(ego=teacher.model.inputs().detach(), seconds=1.0, epochs=teacher.best_epoch + 1)
    save_stages(path, tiny_data.name, {"select": stage})
    student = base.with_options(method="ste", epochs=20, warm_start_from=path)
    alone = train(tiny_data, student)
    taught = train(tiny_data, student.with_options(distillation=DistillationConfig(path, weight=2.0, top=10)))
    assert taught.best_valid["recall@20"] > alone.best_valid["recall@20"]


def test_a_teacher_trained_under_other_layers_is_refused(tmp_path: Path, tiny_data: Dataset) -> None:
    """Its ego embeddings propagated under this run's layers would rank otherwise than the teacher it was."""
    stage = SavedStage(ego=torch.randn(tiny_data.n_users + tiny_data.n_items, 8), seconds=1.0, epochs=1)
    adjacency = to_torch_sparse(normalized_adjacency(tiny_data.train), torch.device("cpu"))
    for saved_layers, refused in ((2, True), (3, False), (None, False)):  # None: a file from before the check
        path = tmp_path / f"fp-{saved_layers}.pt"
        save_stages(path, tiny_data.name, {"select": stage}, layers=saved_layers)

        def load(path: Path = path) -> object:
            return load_teacher(
                DistillationConfig(path, top=5), "select", dataset=tiny_data.name, n_users=tiny_data.n_users,
                adjacency=adjacency, layers=3, seen=tiny_data.train,
            )  # fmt: skip

        if refused:
            with pytest.raises(WarmStartError, match="trained with --layers 2, this run propagates 3"):
                load()
        else:
            load()
