"""remove_softmax / NoSoftmaxWrapper and calculate_sign_mu."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

from signxai.torch_signxai import NoSoftmaxWrapper, calculate_relevancemap, remove_softmax
from signxai.torch_signxai.methods.signed import calculate_sign_mu


def batch(seed: int = 0, n: int = 3) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, 4)))


def trunk(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).double()


class Functional(nn.Module):
    """A model whose softmax is a function call in forward."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.body = trunk()
        self.fn = fn

    def forward(self, x):
        return self.fn(self.body(x))


SOFTMAX_CALLS = {
    "torch.softmax": lambda z: torch.softmax(z, dim=1),
    "F.softmax": lambda z: F.softmax(z, dim=1),
    "Tensor.softmax": lambda z: z.softmax(dim=-1),
    "torch.log_softmax": lambda z: torch.log_softmax(z, dim=1),
    "F.log_softmax": lambda z: F.log_softmax(z, dim=1),
    "Tensor.log_softmax": lambda z: z.log_softmax(1),
    "torch.special.softmax": lambda z: torch.special.softmax(z, dim=1),
}


def logits_of(model_trunk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model_trunk(x)


# --------------------------------------------------------------------------- remove_softmax


@pytest.mark.parametrize("layer", [nn.Softmax(dim=1), nn.LogSoftmax(dim=1), nn.Softmax(dim=-1)])
def test_softmax_module_at_the_end_of_a_sequential(layer):
    body = trunk()
    model = nn.Sequential(*body, layer)
    x = batch()
    with torch.no_grad():
        output = remove_softmax(model)(x)
    expected = logits_of(body, x)
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
    with torch.no_grad():
        assert not torch.allclose(model(x), expected)  # the model itself still applies it


def test_softmax_nested_inside_a_submodule():
    torch.manual_seed(1)
    first, second = nn.Linear(4, 5).double(), nn.Linear(5, 3).double()
    model = nn.Sequential(first, nn.Sequential(nn.ReLU(), nn.Sequential(second, nn.Softmax(dim=1))))
    x = batch(1)
    with torch.no_grad():
        expected = second(torch.relu(first(x)))
        torch.testing.assert_close(remove_softmax(model)(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("call", sorted(SOFTMAX_CALLS))
def test_functional_softmax_in_forward(call):
    model = Functional(SOFTMAX_CALLS[call])
    x = batch(2)
    with torch.no_grad():
        torch.testing.assert_close(remove_softmax(model)(x), logits_of(model.body, x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "model",
    [trunk(3), Functional(torch.tanh), nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=1), nn.Linear(4, 2))],
    ids=["plain", "tanh", "softmax_in_the_middle"],
)
def test_models_without_a_final_softmax_are_unchanged(model):
    model = model.double()
    x = batch(3)
    with torch.no_grad():
        torch.testing.assert_close(remove_softmax(model)(x), model(x), rtol=0, atol=0)


def test_names_parameters_and_state_dict_are_preserved():
    model = nn.Sequential(trunk(4), nn.Softmax(dim=1))
    wrapper = remove_softmax(model)
    assert [n for n, _ in wrapper.named_modules()] == [n for n, _ in model.named_modules()]
    modules = dict(model.named_modules())
    for name, module in wrapper.named_modules():
        if name:
            assert module is modules[name]
    assert [(n, id(p)) for n, p in wrapper.named_parameters()] == [(n, id(p)) for n, p in model.named_parameters()]
    assert list(wrapper.state_dict()) == list(model.state_dict())
    assert dict(wrapper.named_modules())["0.2"] is model[0][2]


def test_root_parameters_and_buffers_are_shared():
    class Root(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.eye(4, 3, dtype=torch.float64) * 2)
            self.register_buffer("shift", torch.ones(3, dtype=torch.float64))

        def forward(self, x):
            return F.softmax(x @ self.weight + self.shift, dim=1)

    model = Root()
    wrapper = remove_softmax(model)
    assert wrapper.weight is model.weight and wrapper.shift is model.shift
    x = batch(5)[0].numpy()
    # logit t is 2 * x_t + 1: the gradient of the selected logit is 2 at input t
    np.testing.assert_array_equal(
        calculate_relevancemap(wrapper, x, method="gradient", target_class=1), np.array([0.0, 2.0, 0.0, 0.0])
    )


def test_the_wrapped_model_is_not_modified():
    model = nn.Sequential(trunk(5), nn.Softmax(dim=1)).eval()
    x = batch(6)
    with torch.no_grad():
        before = model(x).clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_modules()]
    wrapper = remove_softmax(model)
    with torch.no_grad():
        wrapper(x)
    calculate_relevancemap(wrapper, x[0], method="gradient")
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    torch.testing.assert_close(after.sum(dim=1), torch.ones(3, dtype=torch.float64))  # still probabilities
    assert [n for n, _ in model.named_modules()] == names
    assert isinstance(model[1], nn.Softmax)
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value)
    assert not model.training
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks


@pytest.mark.parametrize("mode", [True, False])
def test_wrapping_keeps_the_models_mode_and_the_flags_stay_in_step(mode):
    model = nn.Sequential(trunk(6), nn.Softmax(dim=1)).train(mode)
    wrapper = remove_softmax(model)
    assert model.training is mode and wrapper.training is mode
    wrapper.train(not mode)
    assert model.training is (not mode) and all(m.training is (not mode) for m in model.modules())
    model.train(mode)
    assert wrapper.training is mode


def test_gradient_through_the_wrapper_is_the_logits_gradient():
    torch.manual_seed(7)
    linear = nn.Linear(4, 3).double()
    model = nn.Sequential(linear, nn.Softmax(dim=1))
    x = batch(7)[0].numpy()
    w = linear.weight.detach().numpy()
    for t in range(3):
        np.testing.assert_array_equal(
            calculate_relevancemap(remove_softmax(model), x, method="gradient", target_class=t), w[t]
        )
    # without the wrapper, the softmax's gradient is a different map
    assert not np.allclose(calculate_relevancemap(model, x, method="gradient", target_class=0), w[0])


def test_remove_softmax_is_idempotent_and_checks_its_argument():
    model = nn.Sequential(trunk(8), nn.Softmax(dim=1))
    wrapper = remove_softmax(model)
    assert isinstance(wrapper, NoSoftmaxWrapper)
    assert remove_softmax(wrapper) is wrapper
    with pytest.raises(TypeError, match="Module"):
        remove_softmax(lambda x: x)
    with pytest.raises(TypeError, match="Module"):
        NoSoftmaxWrapper("model")


def test_wrapper_can_be_deep_copied():
    model = nn.Sequential(trunk(9), nn.Softmax(dim=1)).train()
    wrapper = remove_softmax(model)
    clone = copy.deepcopy(wrapper)
    assert clone.wrapped is not model and clone.training
    clone.eval()
    assert model.training  # the copy's flag is its own
    x = batch(9)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), logits_of(model[0], x), rtol=0, atol=0)


# --------------------------------------------------------------------------- calculate_sign_mu


def expected_sign(x: np.ndarray, mu: float) -> np.ndarray:
    return 1.0 - 2.0 * (np.asarray(x, dtype=np.float64) < mu)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sign_mu_numpy_keeps_type_and_dtype(dtype):
    x = np.array([[-1.5, 0.0, 0.25], [0.5, -0.0, 3.0]], dtype=dtype)
    result = calculate_sign_mu(x)
    assert isinstance(result, np.ndarray) and result.dtype == dtype and result.shape == x.shape
    np.testing.assert_array_equal(result, [[-1, 1, 1], [1, 1, 1]])
    np.testing.assert_array_equal(calculate_sign_mu(x, 0.5), [[-1, -1, -1], [1, -1, 1]])
    np.testing.assert_array_equal(calculate_sign_mu(x, mu=-1.5), [[1, 1, 1], [1, 1, 1]])


def test_sign_mu_numpy_integers_and_lists():
    result = calculate_sign_mu(np.array([-2, 0, 3]))
    assert result.dtype == np.float64
    np.testing.assert_array_equal(result, [-1.0, 1.0, 1.0])
    result = calculate_sign_mu([-0.1, 0.0, 0.1], mu=0.1)
    assert isinstance(result, np.ndarray)
    np.testing.assert_array_equal(result, [-1.0, -1.0, 1.0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sign_mu_torch_keeps_type_and_dtype(dtype):
    x = torch.tensor([[-1.5, 0.0, 0.25], [0.5, -0.0, 3.0]], dtype=dtype, requires_grad=True)
    result = calculate_sign_mu(x)
    assert isinstance(result, torch.Tensor) and result.dtype == dtype and result.shape == x.shape
    assert torch.equal(result.detach(), torch.tensor([[-1, 1, 1], [1, 1, 1]], dtype=dtype))
    assert torch.equal(calculate_sign_mu(x, 0.25).detach(), torch.tensor([[-1, -1, 1], [1, -1, 1]], dtype=dtype))
    assert x.grad is None


def test_sign_mu_torch_integers():
    result = calculate_sign_mu(torch.tensor([-1, 0, 2]))
    assert isinstance(result, torch.Tensor) and result.is_floating_point()
    assert result.tolist() == [-1.0, 1.0, 1.0]


@given(
    x=hnp.arrays(np.float64, hnp.array_shapes(max_dims=3, max_side=4), elements=st.floats(-10, 10, allow_nan=False)),
    mu=st.one_of(st.just(0.0), st.floats(-10, 10, allow_nan=False)),
)
def test_sign_mu_property(x, mu):
    expected = expected_sign(x, mu)
    np.testing.assert_array_equal(calculate_sign_mu(x, mu), expected)
    np.testing.assert_array_equal(calculate_sign_mu(torch.from_numpy(x), mu).numpy(), expected)
    at_mu = np.full(x.shape, mu)
    assert np.all(calculate_sign_mu(at_mu, mu) == 1)  # the threshold itself counts as positive
