"""Ranking distillation: the teacher's lists skip seen items, the KL vanishes only when the student agrees."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from trainer.data import Dataset
from trainer.distillation import DistillationConfig, RankingDistillation, propagated_mean, top_unseen
from trainer.graph import normalized_adjacency, to_torch_sparse
from trainer.train import TrainConfig, train
from trainer.warm_start import SavedStage, save_stages


def test_top_unseen_skips_training_items_and_orders_by_score() -> None:
    users = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[3.0, 0.0], [2.0, 1.0], [1.0, 2.0], [0.0, 3.0]])
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    top = top_unseen(users, items, seen, 2, max_cells=4)  # one user per chunk
    assert top.tolist() == [[1, 2], [3, 2]]


def test_propagated_mean_is_lightgcn_layer_mean() -> None:
    train = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1]], dtype=np.float32))
    adjacency = to_torch_sparse(normalized_adjacency(train), torch.device("cpu"))
    ego = torch.randn(5, 3)
    dense = torch.from_numpy(normalized_adjacency(train).toarray())
    expected = (ego + dense @ ego + dense @ dense @ ego) / 3
    assert torch.allclose(propagated_mean(ego, adjacency, 2), expected, atol=1e-6)


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
    base = TrainConfig(method="fp", dim=16, epochs=30, eval_every=5, batch_size=1024, lr=1e-2, device="cpu")
    teacher = train(tiny_data, base)
    path = tmp_path / "fp.pt"
    stage = SavedStage(ego=teacher.model.inputs().detach(), seconds=1.0, epochs=teacher.best_epoch + 1)
    save_stages(path, tiny_data.name, {"select": stage})
    student = dataclasses.replace(base, method="ste", epochs=20, warm_start_from=path)
    alone = train(tiny_data, student)
    taught = train(tiny_data, dataclasses.replace(student, distillation=DistillationConfig(path, weight=2.0, top=10)))
    assert taught.best_valid["recall@20"] > alone.best_valid["recall@20"]
