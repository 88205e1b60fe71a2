"""Tests of smallct.engine.ranks: the shards of a training epoch, the parts of an evaluation, and DDP on 2 gloo
processes of this machine (one optimiser step of batch B on each of 2 ranks equals one of 2B on one process; the
frozen-backbone phase)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from smallct.config.run import TrainConfig
from smallct.engine.ranks import Ranks, RankStopped
from smallct.engine.train import fit

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_one_process_outside_torchrun_and_the_environment_inside():
    assert Ranks.from_env({}) == Ranks() and not Ranks().distributed and Ranks().main
    ranks = Ranks.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                            "GROUP_RANK": "1"})
    assert (ranks.rank, ranks.world, ranks.local_rank, ranks.local_world, ranks.node) == (3, 4, 1, 2, 1)
    assert not ranks.main and ranks.distributed and "rank 3 of 4 (node 1" in str(ranks)
    with pytest.raises(ValueError, match="RANK=x"):
        Ranks.from_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_one_process_takes_every_row_in_the_order_of_the_epoch_as_before():
    # the single-process rule of smallct <= 0.6: batches of bs in order, a last batch of 1 dropped (BatchNorm)
    order = torch.randperm(23, generator=torch.Generator().manual_seed(0))
    for n, bs in ((23, 5), (21, 5), (20, 5)):
        steps = Ranks().steps_per_epoch(n, bs)
        assert steps == (n // bs if n % bs < 2 else n // bs + 1)
        shards = Ranks().shard(order[:n], bs, steps)
        # every row, in order: a remainder of 1 joins the last batch (never a batch of 1), a larger one is a batch
        assert torch.equal(torch.cat([rows for rows, _ in shards]), order[:n])
        assert all(share == 1 for _, share in shards)


@pytest.mark.parametrize("n", [40, 41, 43, 44, 45])
def test_ranks_take_disjoint_rows_in_equal_steps_and_their_shares_weigh_the_global_batch(n):
    # a mutant where two ranks read the same rows, or take different step counts (a hung all-reduce), fails here
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    world, bs = 2, 5
    ranks = [Ranks(r, world, r, world) for r in range(world)]
    steps = {r.steps_per_epoch(n, bs) for r in ranks}
    assert len(steps) == 1
    count = steps.pop()
    shards = [r.shard(order, bs, count) for r in ranks]
    for b in range(len(shards[0])):
        parts = [s[b][0] for s in shards]
        assert all(len(p) >= 2 for p in parts)  # never a batch of 1 on any rank
        global_batch = torch.cat(parts)
        assert len(set(global_batch.tolist())) == len(global_batch)
        # each part's mean loss times its share, averaged over the ranks, is the mean over the global batch
        assert all(s[b][1] == pytest.approx(len(p) * world / len(global_batch)) for s, p in zip(shards, parts))
    seen = torch.cat([rows for s in shards for rows, _ in s])
    # every row once: a remainder too small for 2 rows a rank joins the last global batch (a mutant dropping it fails)
    assert len(set(seen.tolist())) == len(seen) == n


def test_each_rank_augments_with_draws_of_its_own_and_one_process_with_the_order_generator():
    # a mutant sharing the order generator across ranks gives both ranks the same flips of their images
    order = torch.Generator().manual_seed(5)
    assert Ranks().augment_generator(5, order) is order  # one process: its draws as before smallct 0.7
    draws = [Ranks(r, 2, r, 2).augment_generator(5, order) for r in range(2)]
    assert all(d is not order for d in draws)
    assert not torch.equal(torch.rand(8, generator=draws[0]), torch.rand(8, generator=draws[1]))


def test_evaluation_parts_cover_every_row_once_without_padding():
    for n in (1, 7, 10):
        parts = [Ranks(r, 3, r, 3).part(n) for r in range(3)]
        assert np.array_equal(np.concatenate(parts), np.arange(n))  # in order, each row once (no padding)


def test_a_failed_collective_names_the_rank_and_the_fold(tmp_path):
    ranks = Ranks(1, 2, 1, 2)
    with pytest.raises(RankStopped, match=r"rank 1 of 2 .*fold r0_f3 of .*run.*Connection closed by peer.*resume"):
        with ranks.during("fold r0_f3", tmp_path / "run"):
            raise RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1234")
    with pytest.raises(RuntimeError, match="^an ordinary error$"):  # not a collective's: as it was
        with ranks.during("fold r0_f3", tmp_path / "run"):
            raise RuntimeError("an ordinary error")


class Tiny(nn.Module):
    """No BatchNorm: one step on 2 ranks and on 1 process see the same arithmetic up to the order of sums."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3)))


class TinyBN(Tiny):
    """With BatchNorm: each rank's running statistics follow its own batches."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().mean((2, 3)))


class SameShard(Ranks):
    """A deliberately broken variant: every rank reads rank 0's shard."""

    def shard(self, order, batch_size, steps):
        return Ranks(0, self.world, 0, self.local_world).shard(order, batch_size, steps)


def _data(n: int = 16, size: int = 12):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8), torch.arange(n) % 2


def _fit(ranks: Ranks, cfg: TrainConfig, kind: str = "") -> dict:
    torch.manual_seed(0)
    model = TinyBN() if kind == "bn" else Tiny()
    x, y = _data()
    fit(model, x, y, cfg, MEAN, STD, seed=7, progress=False, ranks=ranks)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, world: int, store: str, kind: str, cfg: TrainConfig, out: str):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        ranks = (SameShard if kind == "broken" else Ranks)(rank, world, rank, world)
        torch.save(_fit(ranks, cfg, kind), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _on_two_ranks(tmp_path, kind: str, cfg: TrainConfig) -> list[dict]:
    out = str(tmp_path / kind)
    mp.spawn(_worker, args=(2, str(tmp_path / f"{kind}.store"), kind, cfg, out), nprocs=2, join=True)
    return [torch.load(f"{out}.{r}") for r in range(2)]


def _largest_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# One optimiser step; a large learning rate so that a wrong gradient moves the weights far
ONE_STEP = TrainConfig(epochs=1, batch_size=8, lr=0.5, momentum=0.0, weight_decay=0.0, schedule="constant",
                       augment="none", ema=0.0)


def test_one_step_on_two_ranks_of_batch_b_equals_one_process_of_batch_2b(tmp_path):
    torch.set_num_threads(1)
    one = _fit(Ranks(), TrainConfig(**{**ONE_STEP.__dict__, "batch_size": 16}))
    two = _on_two_ranks(tmp_path, "ddp", ONE_STEP)
    broken = _on_two_ranks(tmp_path, "broken", ONE_STEP)
    start = _fit(Ranks(), TrainConfig(**{**ONE_STEP.__dict__, "lr": 1e-30}))
    assert _largest_difference(one, start) > 1e-2  # the step moved the weights
    assert _largest_difference(two[0], two[1]) == 0  # the ranks hold one model
    # gloo sums in another order than one process does (pytorch #36871): float32 rounding, far below 1e-5
    assert _largest_difference(two[0], one) < 1e-5
    # the same test catches the broken variant: both ranks read rank 0's shard, half the global batch
    assert _largest_difference(broken[0], one) > 1e-3


def test_a_frozen_backbone_phase_under_ddp_trains_the_backbone_as_one_process_does(tmp_path):
    # --freeze-epochs 1 toggles requires_grad after epoch 1; DDP is built again with the backbone, so that its
    # gradients are reduced over both ranks: a mutant that keeps the first wrapper (head only) trains the backbone
    # on rank 0's half of the batch (rank 0's state is what every rank ends with), far from one process's 2B
    cfg = TrainConfig(**{**ONE_STEP.__dict__, "epochs": 2, "freeze_epochs": 1})
    two = _on_two_ranks(tmp_path, "frozen", cfg)
    one = _fit(Ranks(), TrainConfig(**{**cfg.__dict__, "batch_size": 16}))
    start = _fit(Ranks(), TrainConfig(**{**cfg.__dict__, "lr": 1e-30}))
    assert float((one["conv.weight"] - start["conv.weight"]).abs().max()) > 1e-2  # the backbone trained in epoch 2
    assert _largest_difference(two[0], two[1]) == 0
    assert _largest_difference(two[0], one) < 1e-5


def test_ranks_end_every_epoch_with_rank_0s_batchnorm_statistics_and_average(tmp_path):
    # DDP gives every rank rank 0's buffers at the start of each forward, but each rank's last forward moves its own:
    # a mutant without Ranks.broadcast_state before evaluation ends with the ranks' BatchNorm statistics (and the EMA,
    # which copies them) apart, so the ranks would evaluate different models
    cfg = TrainConfig(**{**ONE_STEP.__dict__, "epochs": 2, "batch_size": 4, "ema": 0.5, "augment": "flip"})
    two = _on_two_ranks(tmp_path, "bn", cfg)
    assert _largest_difference(two[0], two[1]) == 0
    assert float(two[0]["bn.running_mean"].abs().max()) > 0  # the statistics moved from their start


def _decide_worker(rank: int, world: int, store: str, out: str):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        ranks = Ranks(rank, world, rank, world)
        said = [ranks.decide(lambda: [rank, "folds"])]
        try:  # rank 0's refusal (a resume with other settings) is every rank's, in its own words
            ranks.decide(lambda: (_ for _ in ()).throw(ValueError(f"refused on rank {rank}")))
        except ValueError as err:
            said.append(str(err))
        torch.save(said, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_rank_0_decides_for_every_rank_and_its_refusal_stops_them_all(tmp_path):
    # mutants caught: every rank deciding for itself (rank 1 would say [1, "folds"]); rank 0's ValueError not sent
    # (rank 1 would wait in the broadcast, or go on)
    out = str(tmp_path / "decide")
    mp.spawn(_decide_worker, args=(2, str(tmp_path / "decide.store"), out), nprocs=2, join=True)
    assert [torch.load(f"{out}.{r}") for r in range(2)] == [[[0, "folds"], "refused on rank 0"]] * 2
