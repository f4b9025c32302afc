"""KPLinear and KP-LSTM against explicit torch.kron references."""

import math

import pytest
import torch

from kpgen.train.nn import KPLSTM, KPLinear, KPLSTMClassifier, kp_apply

SHAPES = [
    ((2, 3), (4, 5)),
    ((32, 4), (16, 7)),
    ((1, 3), (4, 2)),  # m1 = 1
    ((3, 1), (2, 4)),  # n1 = 1
    ((4, 2), (1, 3)),  # m2 = 1
    ((2, 5), (3, 1)),  # n2 = 1
    ((1, 1), (6, 4)),  # A is a scalar
    ((5, 3), (1, 1)),  # B is a scalar
]


@pytest.mark.parametrize("a_shape,b_shape", SHAPES)
@pytest.mark.parametrize("lead", [(7,), (2, 3), ()])
def test_kplinear_equals_dense_kron(a_shape, b_shape, lead):
    torch.manual_seed(0)
    n_in, n_out = a_shape[1] * b_shape[1], a_shape[0] * b_shape[0]
    layer = KPLinear(n_in, n_out, a_shape, b_shape).double()
    x = torch.randn(*lead, n_in, dtype=torch.float64)
    y = layer(x)
    assert y.shape == (*lead, n_out)
    torch.testing.assert_close(y, x @ torch.kron(layer.a, layer.b).T, rtol=1e-12, atol=1e-12)


def test_kp_apply_index_convention():
    """y[p*m2 + q] = sum_{i,j} A[p,i] B[q,j] x[i*n2 + j]."""
    a, b = torch.randn(3, 2, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    x = torch.randn(10, dtype=torch.float64)
    y = kp_apply(a, b, x)
    for p in range(3):
        for q in range(4):
            ref = sum(a[p, i] * b[q, j] * x[i * 5 + j] for i in range(2) for j in range(5))
            assert math.isclose(float(y[p * 4 + q]), float(ref), rel_tol=1e-12, abs_tol=1e-12)


def test_kplinear_bias_and_shape_checks():
    layer = KPLinear(6, 8, (2, 2), (4, 3), bias=True)
    x = torch.randn(5, 6)
    torch.testing.assert_close(layer(x), x @ layer.dense().T + layer.bias)
    with pytest.raises(ValueError, match="expected 8x6"):
        KPLinear(6, 8, (2, 2), (4, 2))
    with pytest.raises(ValueError, match="expected 9x6"):
        KPLinear(6, 9, (2, 2), (4, 3))
    with pytest.raises(ValueError, match="positive"):
        KPLinear(0, 8, (2, 0), (4, 3))


def test_kplinear_gradients_match_dense():
    torch.manual_seed(1)
    layer = KPLinear(28, 512, (32, 4), (16, 7)).double()
    x = torch.randn(9, 28, dtype=torch.float64)
    target = torch.randn(9, 512, dtype=torch.float64)
    ((layer(x) - target) ** 2).sum().backward()
    a = layer.a.detach().clone().requires_grad_(True)
    b = layer.b.detach().clone().requires_grad_(True)
    ((x @ torch.kron(a, b).T - target) ** 2).sum().backward()
    assert layer.a.grad.abs().sum() > 0 and layer.b.grad.abs().sum() > 0
    torch.testing.assert_close(layer.a.grad, a.grad)
    torch.testing.assert_close(layer.b.grad, b.grad)


def test_kplinear_init_scale():
    torch.manual_seed(2)
    layer = KPLinear(128, 512, (32, 8), (16, 16))
    std = float(layer.dense().detach().std())
    assert 0.5 / math.sqrt(128) < std < 2.0 / math.sqrt(128)
    assert layer.compression == pytest.approx(128 * 512 / (256 + 256))


def reference_lstm(x, wx, wh, bias, h, c):
    """Textbook LSTM with explicit matrices, gate order (i, f, g, o)."""
    hs = wh.shape[1]
    outs, cells = [], []
    for t in range(x.shape[1]):
        z = x[:, t] @ wx.T + h @ wh.T + bias
        i, f = torch.sigmoid(z[:, :hs]), torch.sigmoid(z[:, hs : 2 * hs])
        g, o = torch.tanh(z[:, 2 * hs : 3 * hs]), torch.sigmoid(z[:, 3 * hs :])
        c = f * c + i * g
        h = o * torch.tanh(c)
        outs.append(h)
        cells.append(c)
    return torch.stack(outs, 1), h, c, torch.stack(cells, 1)


def make_lstm(seed=3):
    torch.manual_seed(seed)
    cell = KPLSTM(6, 4, ((4, 2), (4, 3)), ((8, 2), (2, 2))).double()
    with torch.no_grad():
        cell.bias.normal_()
    return cell


def test_kplstm_equals_kron_reference():
    cell = make_lstm()
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    h0, c0 = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    out, (h, c), trace = cell(x, (h0, c0), return_trace=True)
    wx, wh = torch.kron(cell.wx.a, cell.wx.b), torch.kron(cell.wh.a, cell.wh.b)
    r_out, r_h, r_c, r_cells = reference_lstm(x, wx, wh, cell.bias, h0, c0)
    torch.testing.assert_close(out, r_out)
    torch.testing.assert_close(h, r_h)
    torch.testing.assert_close(c, r_c)
    torch.testing.assert_close(trace.cells, r_cells)
    assert trace.gates.shape == (3, 5, 16)


def test_kplstm_equals_torch_lstm_with_kron_weights():
    cell = make_lstm(4)
    ref = torch.nn.LSTM(6, 4, batch_first=True).double()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.kron(cell.wx.a, cell.wx.b))
        ref.weight_hh_l0.copy_(torch.kron(cell.wh.a, cell.wh.b))
        ref.bias_ih_l0.copy_(cell.bias)
        ref.bias_hh_l0.zero_()
    x = torch.randn(2, 7, 6, dtype=torch.float64)
    out, (h, c) = cell(x)
    r_out, (r_h, r_c) = ref(x)
    torch.testing.assert_close(out, r_out)
    torch.testing.assert_close(h, r_h[0])
    torch.testing.assert_close(c, r_c[0])


def test_kplstm_forget_bias_and_parameters():
    cell = KPLSTM(28, 128, ((32, 4), (16, 7)), ((32, 8), (16, 16)))
    assert torch.equal(cell.bias[128:256], torch.ones(128))
    assert torch.equal(cell.bias[:128], torch.zeros(128))
    names = sorted(n for n, _ in cell.named_parameters())
    assert names == ["bias", "wh.a", "wh.b", "wx.a", "wx.b"]


def test_classifier_shapes_and_factor_rules():
    model = KPLSTMClassifier(28, 16, 10, ((8, 4), (8, 7)), ((8, 4), (8, 4)), num_layers=2)
    assert model.wx_factors == [((8, 4), (8, 7)), ((8, 4), (8, 4))]  # layer 1 takes the wh shape
    x = torch.randn(5, 28, 28)
    logits, traces = model(x, return_trace=True)
    assert logits.shape == (5, 10)
    assert len(traces) == 2 and traces[1].cells.shape == (5, 28, 16)
    assert sorted(model.state_dict()) == sorted(
        [f"layers.{k}.{m}.{f}" for k in (0, 1) for m in ("wx", "wh") for f in ("a", "b")]
        + ["layers.0.bias", "layers.1.bias", "head.weight", "head.bias"]
    )
    per_layer = KPLSTMClassifier(
        28, 16, 10, [[[8, 4], [8, 7]], [[16, 2], [4, 8]]], [[[8, 4], [8, 4]], [[4, 4], [16, 4]]], num_layers=2
    )
    assert per_layer(x).shape == (5, 10)
    with pytest.raises(ValueError, match="2 layers"):
        KPLSTMClassifier(28, 16, 10, ((8, 4), (8, 7)), [((8, 4), (8, 4))], num_layers=2)


def test_classifier_backward_reaches_every_parameter():
    model = KPLSTMClassifier(28, 16, 10, ((8, 4), (8, 7)), ((8, 4), (8, 4)))
    loss = torch.nn.functional.cross_entropy(model(torch.rand(4, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
