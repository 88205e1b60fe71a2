"""A sequence model over the slices of a series: :class:`SeriesGRU`, the second stage of RSNA 2019's 1st place.

Each chain (a series, or a piece of one between gaps: :meth:`smallct.data.neighbours.Neighbours.chains`) is a
sequence of per-slice features (T, F): the fold models' six logits and, as an option, their embeddings. The model
standardises them (statistics of its training slices, kept as buffers), appends each slice's differences to the
slices before and after it in the chain (0 at an end), projects them, runs a 2-layer bidirectional GRU over the
chain and puts a per-slice head on its states: six logits per slice. With ``residual`` the head adds to the
slice's own input logits (the first ``n_labels`` features), and starts at zero: before training the model
predicts what the fold models did.

:func:`chain_logits` runs it on a list of chains and :func:`chain_probs` averages the probabilities of each chain
read forward and reversed (the 1st place's test-time augmentation), so a chain and its reverse get the same
predictions, reversed.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence


def neighbour_differences(z: torch.Tensor) -> torch.Tensor:
    """(T, 3F): each slice's features, its difference to the slice before and to the slice after (0 at an end)."""
    before = torch.cat([z[:1], z[:-1]])
    after = torch.cat([z[1:], z[-1:]])
    return torch.cat([z, z - before, z - after], dim=1)


class SeriesGRU(nn.Module):
    """Per-slice logits (T, n_labels) of each chain of per-slice features (T, n_features).

    Parameters
    ----------
    n_features
        Features per slice; the first ``n_labels`` are the fold model's logits (what ``residual`` adds to).
    n_labels
        Outputs per slice (six RSNA labels).
    hidden
        Width of the projection and of each direction of the GRU (1st place: 96).
    layers
        GRU layers (2).
    dropout
        Dropout after the projection and between the GRU layers.
    residual
        Add the head's output to the slice's input logits (head initialised at zero).
    """

    def __init__(self, n_features: int, n_labels: int = 6, hidden: int = 64, layers: int = 2, dropout: float = 0.1,
                 residual: bool = True):
        super().__init__()
        if residual and n_features < n_labels:
            raise ValueError(f"residual: {n_features} features, but the first {n_labels} must be the input logits")
        self.n_features, self.n_labels, self.residual = n_features, n_labels, residual
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.project = nn.Sequential(nn.Linear(3 * n_features, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                          dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(2 * hidden, n_labels)
        if residual:  # start at the fold models' own predictions
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def set_scale(self, features: torch.Tensor) -> None:
        """Standardise inputs with the mean and standard deviation of ``features`` (M, F), the training slices'."""
        self.mean.copy_(features.mean(0))
        self.std.copy_(features.std(0, unbiased=False).clamp_min(1e-6))

    def forward(self, chains: Sequence[torch.Tensor]) -> torch.Tensor:
        """(sum of T, n_labels) logits: every slice of every chain (T_i, F), chains one after the other."""
        lengths = torch.tensor([len(c) for c in chains])
        steps = [self.project(neighbour_differences((c - self.mean) / self.std)) for c in chains]
        packed = pack_padded_sequence(pad_sequence(steps, batch_first=True), lengths, batch_first=True,
                                      enforce_sorted=False)
        states, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True)
        out = self.head(torch.cat([states[i, :n] for i, n in enumerate(lengths.tolist())]))
        if self.residual:
            out = out + torch.cat([c[:, :self.n_labels] for c in chains])
        return out


def split_rows(values: torch.Tensor, chains: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The rows of ``values`` (sum of T, ...) cut back into one block per chain."""
    return list(torch.split(values, [len(c) for c in chains]))


@torch.no_grad()
def chain_logits(model: SeriesGRU, chains: Sequence[torch.Tensor], batch: int = 64) -> list[torch.Tensor]:
    """Each chain's logits (T, n_labels), in eval mode, ``batch`` chains at a time."""
    model.eval()
    out = []
    for start in range(0, len(chains), batch):
        part = chains[start:start + batch]
        out += split_rows(model(part), part)
    return out


@torch.no_grad()
def chain_probs(model: SeriesGRU, chains: Sequence[torch.Tensor], batch: int = 64) -> list[torch.Tensor]:
    """Each chain's probabilities (T, n_labels): the mean of the chain read forward and read reversed."""
    forward = chain_logits(model, chains, batch)
    backward = chain_logits(model, [c.flip(0) for c in chains], batch)
    return [(torch.sigmoid(f) + torch.sigmoid(b.flip(0))) / 2 for f, b in zip(forward, backward)]
