"""The series GRU (smallct.models.sequence): neighbour differences, the residual start, padding and reversal."""

import torch

from smallct.models.sequence import SeriesGRU, chain_logits, chain_probs, neighbour_differences


def _model(residual: bool = True, seed: int = 0) -> SeriesGRU:
    torch.manual_seed(seed)
    model = SeriesGRU(8, 6, hidden=16, residual=residual)
    with torch.no_grad():  # a trained-looking head: not the zero start
        model.head.weight.normal_(0, 0.5)
        model.head.bias.normal_(0, 0.5)
    return model.eval()


def _chains(lengths=(5, 1, 9, 3), seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 8, generator=g) * 3 for n in lengths]


def test_neighbour_differences_by_hand():
    z = torch.tensor([[1.0], [4.0], [6.0]])
    # the slice, minus the one before (0 at the start), minus the one after (0 at the end)
    assert neighbour_differences(z).tolist() == [[1, 0, -3], [4, 3, -2], [6, 2, 0]]
    assert neighbour_differences(torch.tensor([[2.0]])).tolist() == [[2, 0, 0]]


def test_residual_model_starts_at_its_input_logits():
    # mutant caught: a head not zeroed at the start (the model would not begin at the fold models' predictions)
    torch.manual_seed(0)
    model = SeriesGRU(8, 6, hidden=16).eval()
    chains = _chains()
    for c, out in zip(chains, chain_logits(model, chains)):
        assert torch.equal(out, c[:, :6])


def test_a_chain_is_predicted_alike_alone_and_among_longer_ones():
    # mutant caught: padded chains run through the GRU without packing (the backward direction would start on padding)
    model, chains = _model(), _chains()
    together = chain_logits(model, chains)
    for c, out in zip(chains, together):
        assert torch.allclose(chain_logits(model, [c])[0], out, atol=1e-5)


def test_reversal_tta_gives_a_reversed_chain_the_same_predictions_reversed():
    # mutants caught: the reversed pass not flipped back before averaging; the forward pass averaged with itself
    model, chains = _model(residual=False), _chains()
    forward = chain_probs(model, chains)
    backward = chain_probs(model, [c.flip(0) for c in chains])
    for f, b in zip(forward, backward):
        assert torch.allclose(f, b.flip(0), atol=1e-6)
    # and the model itself reads direction: one pass alone is not symmetric, so the average is what makes it so
    one = chain_logits(model, [chains[2]])[0]
    other = chain_logits(model, [chains[2].flip(0)])[0].flip(0)
    assert not torch.allclose(one, other, atol=1e-3)


def test_standardisation_uses_the_statistics_it_was_given():
    model = _model()
    x = torch.randn(50, 8) * 5 + 2
    model.set_scale(x)
    assert torch.allclose(model.mean, x.mean(0)) and torch.allclose(model.std, x.std(0, unbiased=False))
    state = model.state_dict()
    assert "mean" in state and "std" in state  # saved with the weights: applied the same on new series
