"""Invariants of every registered memory model: shapes, window vs step, encode + step, gradients."""

import pytest
import torch

from bfm import memory
from bfm.memory import REGISTRY, make_memory

NAMES = sorted(REGISTRY)
IN, OUT, L = 7, 5, 6
# small sizes keep the suite fast; "default" uses the paper's model_dimension
SMALL = {
    "gru": dict(model_dimension=16, token_dim=24),
    "transformer": dict(model_dimension=16, token_dim=24, num_heads=2),
    "s4d": dict(model_dimension=8, token_dim=24),
    "mlp": dict(model_dimension=24),
}


def build(name: str, size: str, **kwargs) -> memory.MemoryModel:
    settings = dict(SMALL[name]) if size == "small" else {}
    settings.update(kwargs)
    torch.manual_seed(0)
    return make_memory(name, IN, OUT, history_length=L, **settings).double().eval()


def tokens(batch: int = 3, length: int = L) -> torch.Tensor:
    return torch.randn(batch, length, IN, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def run_steps(model: memory.MemoryModel, x: torch.Tensor, state=None) -> list[torch.Tensor]:
    state = model.initial_state(x.shape[0], x.device) if state is None else state
    outs = []
    for t in range(x.shape[1]):
        out, state = model.step(x[:, t], state)
        outs.append(out)
    return outs


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_state_batch_first(name):
    model = build(name, "small")
    x = tokens(batch=4)
    assert model(x).shape == (4, OUT)
    state = model.initial_state(4, "cpu")
    assert isinstance(state, tuple) and all(s.shape[0] == 4 for s in state)
    out, state = model.step(x[:, 0], state)
    assert out.shape == (4, OUT) and all(s.shape[0] == 4 for s in state)
    assert all(s.shape[0] == 4 for s in model.encode(x))


@pytest.mark.parametrize("size", ["small", "default"])
@pytest.mark.parametrize("name", NAMES)
def test_window_equals_steps(name, size):
    """Stepping a window token by token gives forward's summary on every prefix."""
    model = build(name, size)
    x = tokens()
    with torch.no_grad():
        steps = run_steps(model, x)
        for t in (0, 2, L - 1):
            torch.testing.assert_close(steps[t], model(x[:, : t + 1]), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("size", ["small", "default"])
@pytest.mark.parametrize("name", NAMES)
def test_encode_then_step_equals_window(name, size):
    model = build(name, size)
    x = tokens()
    with torch.no_grad():
        for split in (0, 1, L - 1):
            state = model.encode(x[:, :split])
            outs = run_steps(model, x[:, split:], state)
            torch.testing.assert_close(outs[-1], model(x), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_float32_window_equals_steps(name):
    torch.manual_seed(0)
    model = make_memory(name, IN, OUT, history_length=L, **SMALL[name]).eval()
    x = tokens().float()
    with torch.no_grad():
        torch.testing.assert_close(run_steps(model, x)[-1], model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    model = build(name, "small").train()
    x = tokens()
    (model(x) ** 2).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_step_gradient_through_encoded_prefix(name):
    """Gradients from encode + step match the window's for the last token."""
    model = build(name, "small")
    x = tokens()
    last = x[:, -1].clone().requires_grad_(True)
    (model(torch.cat([x[:, :-1], last[:, None]], 1)) ** 2).sum().backward()
    window_grad = last.grad.clone()
    last.grad = None
    with torch.no_grad():
        state = model.encode(x[:, :-1])
    (model.step(last, state)[0] ** 2).sum().backward()
    torch.testing.assert_close(last.grad, window_grad)


@pytest.mark.parametrize("name", NAMES)
def test_no_output_activation_gives_negative_values(name):
    model = build(name, "small", output_relu=False)
    assert (model(tokens(batch=16)) < 0).any()
    assert (build(name, "small")(tokens(batch=16)) >= 0).all()


def test_gru_hidden_size_other_than_512():
    model = make_memory("gru", IN, OUT, history_length=L, model_dimension=96)
    assert model.gru.hidden_size == 96
    assert model(tokens().float()).shape == (3, OUT)
    assert model.initial_state(3)[0].shape == (3, 1, 96)


def test_mlp_pads_short_windows_with_zeros_and_keeps_last_tokens():
    model = build("mlp", "small")
    x = tokens()
    padded = torch.cat([torch.zeros(3, 2, IN, dtype=x.dtype), x[:, : L - 2]], 1)
    torch.testing.assert_close(model(x[:, : L - 2]), model(padded))
    longer = torch.cat([tokens(length=3), x], 1)
    torch.testing.assert_close(model(longer), model(x))


def test_transformer_mean_pooling_window_equals_steps():
    model = build("transformer", "small", pooling="mean")
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(run_steps(model, x)[-1], model(x))
        state = model.encode(x[:, :3])
        torch.testing.assert_close(run_steps(model, x[:, 3:], state)[-1], model(x))


def test_transformer_is_causal():
    """Changing a later token leaves the summaries of earlier prefixes unchanged."""
    model = build("transformer", "default", num_layers=2)
    x = tokens()
    y = x.clone()
    y[:, 4:] = torch.randn_like(y[:, 4:])
    with torch.no_grad():
        features_x, features_y = model._window(x)[0], model._window(y)[0]  # [B, L, d], one causal pass
        torch.testing.assert_close(features_x[:, :4], features_y[:, :4])
        assert not torch.allclose(features_x[:, 4:], features_y[:, 4:])
        steps_x, steps_y = run_steps(model, x), run_steps(model, y)
    for t in range(4):
        torch.testing.assert_close(steps_x[t], steps_y[t])


def test_s4d_kernel_equals_unrolled_complex_recurrence():
    """K_l = 2 Re sum_n C_n Bbar_n Abar_n^l, checked against complex arithmetic and the recurrence."""
    layer = build("s4d", "small").layers[0]
    with torch.no_grad():
        layer.log_dt.uniform_(-3, 0)  # larger steps so the kernel decays visibly over the window
        kernel = layer.kernel(L)  # [L, H]
        dt = layer.log_dt.exp()[:, None]
        a = torch.complex(-layer.log_A_real.exp(), layer.A_imag)  # [H, N/2]
        abar, c = torch.exp(dt * a), torch.view_as_complex(layer.C.contiguous())
        bbar = (abar - 1) / a
        for t in range(L):
            torch.testing.assert_close(kernel[t], 2 * (c * bbar * abar**t).sum(-1).real)
        # the recurrence driven by an impulse traces the kernel (plus D at l = 0)
        u = torch.zeros(2, L, layer.D.shape[0], dtype=torch.float64)
        u[:, 0] = 1.0
        x_re = x_im = torch.zeros(2, *layer.C.shape[:2], dtype=torch.float64)
        for t in range(L):
            y, x_re, x_im = layer.recurrence(u[:, t], x_re, x_im)
            torch.testing.assert_close(y[0], kernel[t] + (layer.D if t == 0 else 0))
        # the FFT convolution equals the recurrence on random inputs
        u = torch.randn(2, L, layer.D.shape[0], dtype=torch.float64)
        conv = layer.convolve(u, "fft")
        torch.testing.assert_close(layer.convolve(u, "direct"), conv)
        x_re = x_im = torch.zeros(2, *layer.C.shape[:2], dtype=torch.float64)
        for t in range(L):
            y, x_re, x_im = layer.recurrence(u[:, t], x_re, x_im)
            torch.testing.assert_close(y, conv[:, t])
        torch.testing.assert_close(layer.convolve_last(u), conv[:, -1])


@pytest.mark.parametrize("conv", ["fft", "direct"])
def test_s4d_two_layers_window_equals_steps(conv):
    model = build("s4d", "small", num_layers=2, conv=conv)
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(run_steps(model, x)[-1], model(x))
        torch.testing.assert_close(run_steps(model, x[:, 2:], model.encode(x[:, :2]))[-1], model(x))


def test_s4d_step_mode_uses_current_parameters():
    """After a parameter change, step mode still equals window mode (no frozen discretisation)."""
    model = build("s4d", "small", num_layers=2)
    x = tokens()
    with torch.no_grad():
        model.initial_state(3)  # a frozen implementation would cache here
        for layer in model.layers:
            layer.log_dt.add_(1.0)
            layer.log_A_real.add_(0.3)
            layer.A_imag.mul_(1.5)
        torch.testing.assert_close(run_steps(model, x)[-1], model(x))


def test_unknown_name_lists_registered_models():
    with pytest.raises(ValueError, match="registered: " + ", ".join(NAMES)):
        make_memory("lstm", IN, OUT, history_length=L)


def test_paper_defaults():
    assert make_memory("gru", IN, OUT, history_length=L).gru.hidden_size == 512
    transformer = make_memory("transformer", IN, OUT, history_length=L)
    s4d = make_memory("s4d", IN, OUT, history_length=L)
    assert s4d.layers[0].C.shape == (512, 16, 2) and len(s4d.layers) == 1
    assert torch.allclose(s4d.layers[0].log_A_real.exp(), torch.tensor(0.5))
    assert make_memory("mlp", IN, OUT, history_length=L).body[0].net[0].in_features == L * IN
    assert transformer.model_dimension == 32 and transformer.num_heads == 4 and len(transformer.blocks) == 1


@pytest.mark.parametrize("name", NAMES)
def test_step_summary_equals_step(name):
    """The actor loss's summary-only step gives step()'s summary and the same token gradient."""
    model = build(name, "small")
    x = tokens(length=L + 1)
    state = model.encode(x[:, :-1])
    token = x[:, -1].clone().requires_grad_(True)
    full, _ = model.step(token, state)
    (grad_full,) = torch.autograd.grad(full.sum(), token)
    summary = model.step_summary(token, state)
    (grad_summary,) = torch.autograd.grad(summary.sum(), token)
    torch.testing.assert_close(summary, full)
    torch.testing.assert_close(grad_summary, grad_full)


def test_transformer_last_token_window_keeps_the_dropout_stream():
    """In training mode the window's summary reads only the last token's block output, yet draws the
    dropout noise of the whole window: the same output and the same random numbers afterwards as
    the block run on every token; encode's keys and values likewise."""
    from bfm.memory.transformer import Block

    torch.manual_seed(0)
    block = Block(16, 2, 32, dropout=0.3).double().train()
    x = torch.randn(4, 6, 16, dtype=torch.float64)
    torch.manual_seed(5)
    full, keys, values = block(x)
    after_full = torch.rand(3)
    torch.manual_seed(5)
    last, keys_last, values_last = block(x, last_only=True)
    after_last = torch.rand(3)
    torch.manual_seed(5)
    keys_only, values_only = block.keys_values(x)
    after_keys = torch.rand(3)
    torch.testing.assert_close(last, full[:, -1:])
    assert torch.equal(keys_last, keys) and torch.equal(values_last, values)
    assert torch.equal(keys_only, keys) and torch.equal(values_only, values)
    assert torch.equal(after_last, after_full) and torch.equal(after_keys, after_full)
    assert not torch.equal(full, block.eval()(x)[0])  # the dropout was active
