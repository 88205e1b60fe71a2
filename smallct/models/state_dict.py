"""Whether a state dict fits an architecture: :func:`state_problems`, the rule by which
:func:`smallct.models.factory.create_model` loads (every tensor but the final layer's, by name and shape), and
:func:`check_fits`, which
:func:`smallct.models.weights.resolve_weights` applies to a weights file so that a file of another architecture
stops a command before it writes anything."""

from __future__ import annotations

import torch

from smallct.models.registry import get_architecture


def state_problems(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], ignore: set) -> str:
    """What keeps ``state`` from loading into a model whose state dict is ``target`` ("" when nothing): missing
    tensors (those in ``ignore``, the final layer, excepted), unexpected ones and ones of the wrong shape."""
    missing = [k for k in target if k not in state and k not in ignore and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    wrong = [k for k in state if k in target and state[k].shape != target[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing tensors (first {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors (first {unexpected[0]})")
    if wrong:
        parts.append(f"{len(wrong)} tensors of the wrong shape (first {wrong[0]})")
    return "; ".join(parts)


def check_fits(arch: str, state: dict[str, torch.Tensor], name: str) -> None:
    """``ValueError`` (one line, naming ``name``) unless ``state`` fits a freshly built ``arch`` apart from its
    final layer, which a new task replaces anyway (any head shape is taken, as :func:`create_model` takes it)."""
    entry = get_architecture(arch)
    model = entry.build(2)
    target = model.state_dict()
    prefix, _ = entry.final_layer(model)
    head = {k for k in target if k.startswith(prefix)}
    problems = state_problems({k: v for k, v in state.items() if not k.startswith(prefix)}, target, head)
    if problems:
        raise ValueError(f"{name}: weights do not fit {arch}: {problems} (a state dict of another architecture? "
                         "pass its --arch)")
