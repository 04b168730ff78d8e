import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from crossmoe import SemanticExpertBank


def _separate_mlps(bank):
    """The bank's experts as independent nn.Sequential modules: the reference."""
    mlps = []
    for e in range(bank.num_experts):
        first, second = nn.Linear(bank.dim, bank.hidden_dim), nn.Linear(bank.hidden_dim, bank.out_dim)
        with torch.no_grad():
            first.weight.copy_(bank.w1[e].T)
            first.bias.copy_(bank.b1[e])
            second.weight.copy_(bank.w2[e].T)
            second.bias.copy_(bank.b2[e])
        mlps.append(nn.Sequential(first, nn.GELU(), second))
    return mlps


def test_matches_independent_mlps():
    bank = SemanticExpertBank(10, 23, num_experts=4, hidden_dim=16)
    x = torch.randn(7, 10)
    out, hidden = bank(x, return_hidden=True)
    assert out.shape == (7, 4, 23) and hidden.shape == (7, 4, 16)
    expected = torch.stack([mlp(x) for mlp in _separate_mlps(bank)], dim=1)
    torch.testing.assert_close(out, expected)


def test_default_names_and_generic_names():
    assert SemanticExpertBank(8, 3).names == ("survival", "combat", "exploration", "general")
    assert SemanticExpertBank(8, 3, num_experts=2, names=None).names == ("expert_0", "expert_1")
    assert SemanticExpertBank(8, 3, num_experts=3).names == ("expert_0", "expert_1", "expert_2")
    assert "survival" in repr(SemanticExpertBank(8, 3))


def test_experts_are_initialised_differently():
    bank = SemanticExpertBank(8, 5)
    assert not torch.allclose(bank.w1[0], bank.w1[1])
    out = bank(torch.randn(4, 8))
    assert not torch.allclose(out[:, 0], out[:, 1])


@given(seed=st.integers(0, 1000), batch=st.integers(2, 6))
def test_batch_independence(seed, batch):
    bank = SemanticExpertBank(8, 5, hidden_dim=12)
    x = torch.randn(batch, 8, generator=torch.Generator().manual_seed(seed))
    alone = bank(x[:1])
    x[1:] = torch.randn(batch - 1, 8)
    torch.testing.assert_close(bank(x)[:1], alone)


def test_every_parameter_gets_a_finite_nonzero_gradient():
    bank = SemanticExpertBank(8, 5, hidden_dim=12)
    bank(torch.randn(6, 8)).square().sum().backward()
    for name, parameter in bank.named_parameters():
        assert torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0, name


def test_gradcheck_float64():
    bank = SemanticExpertBank(3, 2, num_experts=2, hidden_dim=4, names=None, activation=nn.Tanh()).double()
    x = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(bank, (x,))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"names": ("a", "b")}, r"names must hold num_experts=4 names \(or be None\), got 2"),
        ({"num_experts": 0}, "num_experts must be a positive integer, got 0"),
        ({"hidden_dim": 0}, "hidden_dim must be a positive integer"),
        ({"out_dim": -3}, "out_dim must be a positive integer"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SemanticExpertBank(**{"dim": 8, "out_dim": 5, **kwargs})


def test_forward_errors():
    bank = SemanticExpertBank(8, 5)
    with pytest.raises(ValueError, match=r"x must be \(B, 8\), got \(4, 7\)"):
        bank(torch.randn(4, 7))
    with pytest.raises(ValueError, match=r"x must be \(B, 8\), got \(8,\)"):
        bank(torch.randn(8))
