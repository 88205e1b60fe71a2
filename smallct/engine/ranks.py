"""The processes of one job (``torchrun``): which rows each trains on and evaluates, and what they share.

``torchrun --nproc-per-node N -m smallct.cv ...`` starts N processes (ranks) on each machine; the environment tells
each its rank (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``). :class:`Ranks` is the one owner of
that: a single process is ``Ranks()`` (world 1), on which every collective is a no-op, so the fit loop reads the
same with one process or many.

* **Training (DistributedDataParallel).** Every rank draws the epoch's order from the same generator (the fold's
  seed), cuts it into global batches of ``batch_size x world`` rows, and takes its own part of each
  (:meth:`Ranks.shard`): every rank takes the same number of steps (an uneven count hangs the all-reduce), and the
  loss of a rank's part is weighted so that the averaged gradient is that of the global batch. Augmentation and
  mixup draw from a generator of the rank's own (:func:`smallct.data.seeds.rank_seed`).
* **Evaluation.** Each rank predicts a contiguous part of the rows, without padding (a padded shard counts images
  twice, pytorch #25162), and the parts are gathered in row order (:meth:`Ranks.gather`): every figure is
  computed from all the predictions, never averaged from the ranks' figures.
* **State.** BatchNorm buffers drift apart within a step (each rank's batch); rank 0's state is broadcast
  before evaluation (:meth:`Ranks.broadcast_state`), and rank 0 writes the run's files.
* **Faults.** A collective that fails (a rank killed, a machine gone) or torchrun's stop signal becomes one line
  naming this rank and the fold (:meth:`Ranks.during`); the folds already written are kept.

gloo on a CPU, NCCL on CUDA (one GPU per local rank). DDP on CPU is not bit-reproducible against one process
(pytorch #36871): the tests compare within a stated tolerance.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from smallct.data.seeds import rank_seed

# How long a rank waits for the others at a collective before it gives up (a hung, not a dead, rank: a dead one's
# sockets close and the others stop at once). Fold-parallel runs wait at the end for the slowest fold.
STEP_TIMEOUT = datetime.timedelta(minutes=30)
FOLDS_TIMEOUT = datetime.timedelta(days=30)
ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


class RankStopped(ConnectionError):
    """This rank stopped because another did (a failed collective, or torchrun's stop signal): one line."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in a job of ``world`` processes (``Ranks()``: a job of one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    node: int = field(default=0, compare=False)
    torchrun: bool = field(default=False, compare=False)  # started by torchrun (a job of one too: NCCL, DDP)
    # gloo groups for objects (on the CPU, whatever the device), set while joined: ``steps`` waits STEP_TIMEOUT (the
    # parts of an evaluation, settings), ``waits`` FOLDS_TIMEOUT (a rank decoding the cache, making the folds, or
    # training its folds)
    steps: object = field(default=None, compare=False, repr=False)
    waits: object = field(default=None, compare=False, repr=False)

    @classmethod
    def from_env(cls, environ=None) -> Ranks:
        """The ranks torchrun's environment describes; ``Ranks()`` outside torchrun."""
        env = os.environ if environ is None else environ
        if "WORLD_SIZE" not in env:
            return cls()
        try:
            rank, world, local, local_world = (int(env.get(k, d)) for k, d in zip(ENVIRONMENT, (0, 1, 0, 1)))
        except ValueError:
            raise ValueError(f"torchrun's environment is not numbers: "
                             f"{', '.join(f'{k}={env.get(k)}' for k in ENVIRONMENT)}") from None
        return cls(rank, world, local, local_world, int(env.get("GROUP_RANK", 0) or 0), torchrun=True)

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes the run's files, logs and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Several processes, or one started by torchrun: a process group, DDP and its collectives (with one process
        they change no figure: ``torchrun --nproc-per-node 1`` checks NCCL on one GPU)."""
        return self.world > 1 or self.torchrun

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world} (node {self.node}, local rank {self.local_rank})"

    # --- the process group ---------------------------------------------------------------------------------

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: its own GPU (``cuda:LOCAL_RANK``) when ``device`` is CUDA, else ``device``."""
        if device.type == "cuda" and self.distributed:
            if self.local_rank >= torch.cuda.device_count():  # two ranks on one GPU: NCCL refuses, or half each
                raise ValueError(f"{self}: this machine shows {torch.cuda.device_count()} CUDA devices for "
                                 f"{self.local_world} processes; start at most that many (--nproc-per-node), or "
                                 "show more (CUDA_VISIBLE_DEVICES)")
            return torch.device("cuda", self.local_rank)
        return device

    @contextlib.contextmanager
    def joined(self, device: torch.device, gradients: bool = True, timeout: datetime.timedelta = STEP_TIMEOUT):
        """Join the job's process group for the block, and leave it after: NCCL on CUDA when the ranks exchange
        ``gradients`` (DDP), else gloo (a CPU, or fold-parallel ranks, which only exchange objects). torchrun's stop
        signal (SIGTERM, when another rank failed) raises :class:`RankStopped` in the block."""
        if not self.distributed or dist.is_initialized():
            yield self
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        nccl = device.type == "cuda" and gradients
        dist.init_process_group("nccl" if nccl else "gloo", timeout=timeout, device_id=device if nccl else None)
        for name, wait in (("steps", STEP_TIMEOUT), ("waits", FOLDS_TIMEOUT)):  # frozen fields, set while joined
            object.__setattr__(self, name, dist.new_group(backend="gloo", timeout=wait))
        previous = signal.signal(signal.SIGTERM, _stopped_by_signal)
        failed = True
        try:
            yield self
            failed = False
        finally:
            # left without tearing down, a gloo group may abort the process at exit (SIGABRT, not the exit code of
            # the one-line error); after an error NCCL's teardown could block on peers inside a collective
            if not (failed and nccl):
                with contextlib.suppress(Exception):
                    dist.destroy_process_group()
            signal.signal(signal.SIGTERM, previous)
            object.__setattr__(self, "steps", None)
            object.__setattr__(self, "waits", None)

    @contextlib.contextmanager
    def during(self, what: str, out):
        """Within the block, a failed collective or torchrun's stop signal is :class:`RankStopped` in one line that
        names this rank and ``what`` it was doing (``fold r0_f1``) in the run ``out``."""
        try:
            yield
        except RankStopped as err:
            if str(err).startswith(str(self)):  # said by an inner block already
                raise
            raise RankStopped(f"{self}: stopped during {what} of {out} ({err}); the finished folds are kept; "
                              "run the same command again to resume") from None
        except RuntimeError as err:
            if not (self.distributed and _collective_failed(err)):
                raise
            first = _first_words(err)
            raise RankStopped(f"{self}: stopped during {what} of {out}: another rank or machine failed "
                              f"({first}); the finished folds are kept; run the same command again to resume") from None

    # --- training rows ---------------------------------------------------------------------------------------

    def per_rank_batch(self, batch_size: int, n: int) -> int:
        """Images per step on each rank: ``batch_size``, or fewer when the set has fewer than a global batch."""
        return max(1, min(batch_size, n // self.world))

    def steps_per_epoch(self, n: int, batch_size: int) -> int:
        """Steps of an epoch of ``n`` rows at ``batch_size`` per rank, the same on every rank: the rows left after the
        full global batches are a step of their own when they give every rank at least 2 rows (never a batch of 1:
        BatchNorm), else they join the last step. Every row is read once an epoch."""
        g = batch_size * self.world
        return max(n // g if n % g < 2 * self.world else n // g + 1, 1)

    def shard(self, order: torch.Tensor, batch_size: int, steps: int) -> list[tuple[torch.Tensor, float]]:
        """This rank's rows of each step of an epoch whose rows are ``order`` (the same on every rank), each with the
        weight of its loss: ``len(rows) x world / len(global batch)``, 1 unless the last global batch is uneven, so
        that the average of the ranks' gradients is the gradient of the global batch."""
        g = batch_size * self.world
        out = []
        for b in range(steps):
            rows = order[b * g:(b + 1) * g] if b < steps - 1 else order[b * g:]
            part = torch.tensor_split(rows, self.world)[self.rank] if self.distributed else rows
            out.append((part, len(part) * self.world / len(rows)))
        return out

    def augment_generator(self, seed: int, order: torch.Generator) -> torch.Generator:
        """The generator of this rank's augmentation and mixup: ``order`` itself in a job of one (a single process's
        draws as before), else one of its own (:func:`smallct.data.seeds.rank_seed`)."""
        if self.world == 1:
            return order
        return torch.Generator(device=order.device).manual_seed(rank_seed(seed, self.rank))

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` in DistributedDataParallel (a job of one: ``model``). Built again whenever the parameters that
        train change (``--freeze-epochs``): DDP reduces the gradients of those that required one when it was built."""
        if not self.distributed:
            return model
        # buffers (BatchNorm statistics) are broadcast from rank 0 at each forward, DDP's default
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    # --- sharing -----------------------------------------------------------------------------------------------

    def part(self, n: int) -> np.ndarray:
        """The rows of ``n`` this rank evaluates: a contiguous part, without padding (:meth:`gather` joins them)."""
        return np.array_split(np.arange(n), self.world)[self.rank]

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's ``rows`` (its :meth:`part`'s outputs, on the CPU), joined in row order, on every rank."""
        if not self.distributed:
            return rows
        parts = [None] * self.world
        dist.all_gather_object(parts, rows.cpu(), group=self.steps)
        return torch.cat(parts)

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of ``values`` (a training epoch's loss, correct count and images)."""
        if self.distributed:
            dist.all_reduce(values)
        return values

    def broadcast_state(self, module: nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers (BatchNorm statistics, an EMA) in place."""
        if self.distributed:
            for value in module.state_dict().values():
                dist.broadcast(value, 0)

    def decide(self, choose):
        """``choose()`` on rank 0, its result (or its ``ValueError``) on every rank: one decision, never N (the folds,
        whose near-duplicate search may take long; the folds left to train)."""
        if not self.distributed:
            return choose()
        box = [None]
        if self.main:
            try:
                box[0] = ("ok", choose())
            except ValueError as err:
                box[0] = ("error", str(err))
        dist.broadcast_object_list(box, 0, group=self.waits)
        kind, value = box[0]
        if kind == "error":
            raise ValueError(value)
        return value

    def check_same(self, what: str, facts: dict) -> None:
        """Refuse, in one line on every rank, ranks whose ``facts`` (their settings, data and folds) differ from
        rank 0's, before anything trains."""
        if not self.distributed:
            return
        every = [None] * self.world
        dist.all_gather_object(every, facts, group=self.steps)
        for r, other in enumerate(every):
            keys = sorted(k for k in set(other) | set(every[0]) if other.get(k) != every[0].get(k))
            if keys:  # shown: the plainest difference (a flag's value rather than the folds it makes)
                shown = min(keys, key=lambda k: len(repr(other.get(k))))
                raise ValueError(f"rank {r} of {self.world} runs with other {what} than rank 0 ({', '.join(keys)}; "
                                 f"{shown}: {_short(other.get(shown))} there, {_short(every[0].get(shown))} on rank "
                                 "0); every rank needs the same command, data and files")

    def wait_for_all(self) -> None:
        """Wait until every rank gets here (fold-parallel: the slowest fold's rank), for up to FOLDS_TIMEOUT."""
        if self.distributed:
            dist.barrier(group=self.waits)

    @contextlib.contextmanager
    def local_first(self):
        """The block runs on each machine's local rank 0 first (decoding the image cache, with its progress bar),
        then on the machine's other ranks (which read the cache it made)."""
        if self.local_rank != 0:
            self.wait_for_all()
        yield
        if self.local_rank == 0:
            self.wait_for_all()


def _short(value, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (a fold assignment of 750,000 images is no message)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _stopped_by_signal(signum, frame):
    raise RankStopped(f"stopped by signal {signal.Signals(signum).name}, torchrun's when another rank failed")


def _first_words(err: BaseException) -> str:
    """The first sentence of ``err``, without gloo's source location: ``Read error [127.0.0.1]:8600: Connection reset
    by peer``."""
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    return text.split(". ")[0].rstrip(".")


def _collective_failed(err: RuntimeError) -> bool:
    """Whether ``err`` is a collective that failed because a peer went away or timed out."""
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err).lower()
    return any(s in text for s in ("connection closed", "connection reset", "gloo", "nccl", "timed out", "broken pipe"))
