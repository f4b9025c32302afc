"""Multi-factor KPLinear, HKP and low-rank matrices, and the GRU / FastRNN / FastGRNN / bidirectional cells
against straightforward references (torch.nn.GRU / LSTM with explicit Kronecker weights, hand-written loops)."""

import math

import pytest
import torch

from kpgen.train.nn import (
    KPGRU,
    HKPLinear,
    KPFastGRNN,
    KPFastRNN,
    KPLinear,
    KPRNNClassifier,
    LowRankLinear,
    kp_apply_n,
    kp_macs,
    kron_chain,
)

F64 = torch.float64

FACTORS = [
    [(3, 2)],
    [(2, 3), (4, 5)],
    [(2, 3), (3, 2), (2, 2)],
    [(1, 2), (3, 1), (2, 2)],  # dimension-1 factors
    [(2, 1), (1, 2), (2, 3), (3, 2)],
]


@pytest.mark.parametrize("shapes", FACTORS)
@pytest.mark.parametrize("lead", [(4,), (2, 3), ()])
def test_kplinear_any_factors_equals_kron_chain(shapes, lead):
    torch.manual_seed(0)
    rows, cols = math.prod(s[0] for s in shapes), math.prod(s[1] for s in shapes)
    layer = KPLinear(cols, rows, factors=shapes).double()
    x = torch.randn(*lead, cols, dtype=F64)
    w = kron_chain(layer.factor_list())
    torch.testing.assert_close(layer(x), x @ w.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(kp_apply_n(layer.factor_list(), x), x @ w.T, rtol=1e-12, atol=1e-12)
    assert layer.weight_params == sum(m * n for m, n in shapes)


def test_kplinear_parameter_names():
    two = KPLinear(15, 8, (2, 3), (4, 5))
    assert sorted(n for n, _ in two.named_parameters()) == ["a", "b"]
    assert sorted(n for n, _ in KPLinear(15, 8, [(2, 3), (4, 5)]).named_parameters()) == ["a", "b"]
    three = KPLinear(18, 12, factors=[(2, 3), (3, 2), (2, 3)])
    assert [n for n, _ in three.named_parameters()] == ["factors.0", "factors.1", "factors.2"]
    with pytest.raises(ValueError, match="expected 12x17"):
        KPLinear(17, 12, factors=[(2, 3), (3, 2), (2, 3)])


def test_kplinear_three_factor_gradients_match_kron_chain():
    torch.manual_seed(1)
    layer = KPLinear(6, 24, factors=[(2, 2), (3, 3), (4, 1)]).double()
    x, target = torch.randn(5, 6, dtype=F64), torch.randn(5, 24, dtype=F64)
    ((layer(x) - target) ** 2).sum().backward()
    fs = [p.detach().clone().requires_grad_(True) for p in layer.factor_list()]
    ((x @ kron_chain(fs).T - target) ** 2).sum().backward()
    for p, q in zip(layer.factor_list(), fs, strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_kplinear_padding_drops_extra_rows_and_zero_pads_columns():
    torch.manual_seed(2)
    layer = KPLinear(13, 30, factors=[(4, 2), (8, 7)], pad=True).double()  # 32 x 14 product
    x = torch.randn(3, 13, dtype=F64)
    full = torch.kron(layer.a, layer.b)
    torch.testing.assert_close(layer(x), x @ full[:30, :13].T)
    assert layer.dense().shape == (30, 13)
    with pytest.raises(ValueError, match="at least 30x13"):
        KPLinear(13, 30, factors=[(2, 2), (8, 7)], pad=True)


def test_kp_macs_counts_the_mode_products():
    assert kp_macs([(32, 4), (16, 7)]) == 4 * 7 * 16 + 32 * 4 * 16  # n1*n2*m2 + m1*n1*m2
    # three factors, last mode first: n1 n2 n3 m3, then n1 n2 m2 m3, then n1 m1 m2 m3
    assert kp_macs([(2, 3), (4, 5), (6, 7)]) == 3 * 5 * 7 * 6 + 3 * 5 * 4 * 6 + 3 * 2 * 4 * 6


def test_multi_factor_init_scale():
    torch.manual_seed(3)
    layer = KPLinear(64, 256, factors=[(4, 4), (8, 4), (8, 4)])
    std = float(layer.dense().detach().std())
    assert 0.5 / 8 < std < 2.0 / 8


def test_hkp_linear():
    torch.manual_seed(4)
    layer = HKPLinear(6, 16, [(3, 2), (4, 3)], dense_rows=4).double()
    assert sorted(n for n, _ in layer.named_parameters()) == ["dense_weight", "kp.a", "kp.b"]
    x = torch.randn(5, 6, dtype=F64)
    w = layer.dense()
    assert w.shape == (16, 6) and torch.equal(w[:4], layer.dense_weight)
    torch.testing.assert_close(w[4:], torch.kron(layer.kp.a, layer.kp.b))
    torch.testing.assert_close(layer(x), x @ w.T)
    assert layer.weight_params == 4 * 6 + 6 + 12
    with pytest.raises(ValueError, match="12x6"):
        HKPLinear(6, 16, [(4, 2), (4, 3)], dense_rows=4)


def test_hkp_trains():
    """A few optimizer steps fit a random linear map better: both parts get gradients."""
    torch.manual_seed(5)
    layer = HKPLinear(8, 16, [(3, 2), (4, 4)], dense_rows=4)
    target = torch.randn(16, 8)
    x = torch.randn(64, 8)
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        loss = ((layer(x) - x @ target.T) ** 2).mean()
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.6 * first
    assert layer.dense_weight.grad.abs().sum() > 0 and layer.kp.a.grad.abs().sum() > 0


def test_lowrank_linear():
    layer = LowRankLinear(7, 9, rank=2).double()
    x = torch.randn(3, 7, dtype=F64)
    torch.testing.assert_close(layer(x), x @ (layer.u @ layer.v).T)
    assert layer.weight_params == 2 * 16


# --------------------------------------------------------------------------------------------- cells


def torch_gru_from(cells, bidirectional=False):
    """torch.nn.GRU whose weights are the KP cells' explicit matrices; biases split back into torch's two."""
    first = cells[0][0]
    ref = torch.nn.GRU(first.input_size, first.hidden_size, num_layers=len(cells), batch_first=True,
                       bidirectional=bidirectional).double()
    hs = first.hidden_size
    with torch.no_grad():
        for k, dirs in enumerate(cells):
            for d, cell in enumerate(dirs):
                sfx = f"_l{k}" + ("_reverse" if d else "")
                getattr(ref, "weight_ih" + sfx).copy_(cell.wx.dense())
                getattr(ref, "weight_hh" + sfx).copy_(cell.wh.dense())
                # r, z: b_ih + b_hh = bias; n: b_in = bias_n, b_hn = bias_hn
                getattr(ref, "bias_ih" + sfx).copy_(cell.bias)
                getattr(ref, "bias_hh" + sfx).copy_(torch.cat([torch.zeros(2 * hs, dtype=F64), cell.bias_hn]))
    return ref


def randomize_biases(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "bias" in name:
                p.normal_()


def test_kpgru_equals_torch_gru_with_kron_weights():
    torch.manual_seed(6)
    cell = KPGRU(6, 4, [(3, 2), (4, 3)], [(6, 2), (2, 2)]).double()
    randomize_biases(cell)
    ref = torch_gru_from([[cell]])
    x = torch.randn(3, 7, 6, dtype=F64)
    h0 = torch.randn(3, 4, dtype=F64)
    out, h = cell(x, h0)
    r_out, r_h = ref(x, h0[None])
    torch.testing.assert_close(out, r_out)
    torch.testing.assert_close(h, r_h[0])
    _, _, trace = cell(x, h0, return_trace=True)
    assert trace.hidden.shape == (3, 7, 4) and trace.gates.shape == (3, 7, 12)


def test_stacked_bidirectional_gru_classifier_equals_torch():
    torch.manual_seed(7)
    model = KPRNNClassifier("gru", 6, 4, 3, [(3, 2), (4, 3)], [(6, 2), (2, 2)], num_layers=2,
                            bidirectional=True).double()
    randomize_biases(model)
    assert model.wx_specs[1]["factors"] == [[6, 4], [2, 2]]  # layer 1 reads 2H: the first factor's columns doubled
    ref = torch_gru_from([[layer.fwd, layer.bwd] for layer in model.layers], bidirectional=True)
    x = torch.randn(2, 5, 6, dtype=F64)
    r_out, r_h = ref(x)
    feats = torch.cat([r_h[-2], r_h[-1]], dim=-1)  # last layer: forward h_T, backward final h
    torch.testing.assert_close(model(x), model.head(feats))
    out = x
    for layer in model.layers:
        out, _ = layer(out)
    torch.testing.assert_close(out, r_out)
    _, traces = model(x, return_trace=True)
    assert traces[1].hidden.shape == (2, 5, 8) and traces[1].gates.shape == (2, 5, 24)
    torch.testing.assert_close(traces[1].hidden, r_out)  # both directions, in forward time order


def test_bidirectional_lstm_equals_torch():
    torch.manual_seed(8)
    model = KPRNNClassifier("lstm", 6, 4, 3, [(4, 2), (4, 3)], [(8, 2), (2, 2)], bidirectional=True).double()
    randomize_biases(model)
    layer = model.layers[0]
    ref = torch.nn.LSTM(6, 4, batch_first=True, bidirectional=True).double()
    with torch.no_grad():
        for sfx, cell in (("_l0", layer.fwd), ("_l0_reverse", layer.bwd)):
            getattr(ref, "weight_ih" + sfx).copy_(cell.wx.dense())
            getattr(ref, "weight_hh" + sfx).copy_(cell.wh.dense())
            getattr(ref, "bias_ih" + sfx).copy_(cell.bias)
            getattr(ref, "bias_hh" + sfx).zero_()
    x = torch.randn(2, 5, 6, dtype=F64)
    out, _ = layer(x)
    r_out, (r_h, _) = ref(x)
    torch.testing.assert_close(out, r_out)
    torch.testing.assert_close(model(x), model.head(torch.cat([r_h[0], r_h[1]], -1)))
    _, traces = model(x, return_trace=True)
    assert traces[0].cells.shape == (2, 5, 8)
    names = {n for n, _ in model.named_parameters()}
    assert {"layers.0.fwd.wx.a", "layers.0.bwd.wh.b", "layers.0.fwd.bias", "head.weight"} <= names


def test_kpfastrnn_equals_hand_loop():
    torch.manual_seed(9)
    cell = KPFastRNN(6, 4, [(2, 2), (2, 3)], [(2, 2), (2, 2)]).double()
    randomize_biases(cell)
    with torch.no_grad():
        cell.alpha.fill_(-1.0)
        cell.beta.fill_(0.5)
    x = torch.randn(3, 5, 6, dtype=F64)
    w, u = cell.wx.dense(), cell.wh.dense()
    a, b = torch.sigmoid(torch.tensor(-1.0, dtype=F64)), torch.sigmoid(torch.tensor(0.5, dtype=F64))
    h = torch.zeros(3, 4, dtype=F64)
    for t in range(5):
        h = a * torch.tanh(x[:, t] @ w.T + h @ u.T + cell.bias) + b * h
    out, hn = cell(x)
    torch.testing.assert_close(hn, h)
    torch.testing.assert_close(out[:, -1], h)


def test_kpfastgrnn_equals_hand_loop():
    torch.manual_seed(10)
    cell = KPFastGRNN(6, 4, [(2, 2), (2, 3)], [(2, 2), (2, 2)]).double()
    randomize_biases(cell)
    with torch.no_grad():
        cell.zeta.fill_(0.3)
        cell.nu.fill_(-2.0)
    assert sorted(n for n, _ in cell.named_parameters()) == [
        "bias_h", "bias_z", "nu", "wh.a", "wh.b", "wx.a", "wx.b", "zeta"]
    x = torch.randn(3, 5, 6, dtype=F64)
    h0 = torch.randn(3, 4, dtype=F64)
    w, u = cell.wx.dense(), cell.wh.dense()
    zeta, nu = torch.sigmoid(torch.tensor(0.3, dtype=F64)), torch.sigmoid(torch.tensor(-2.0, dtype=F64))
    h = h0
    for t in range(5):
        pre = x[:, t] @ w.T + h @ u.T  # W and U shared by the gate and the candidate
        z = torch.sigmoid(pre + cell.bias_z)
        cand = torch.tanh(pre + cell.bias_h)
        h = (zeta * (1 - z) + nu) * cand + z * h
    _, hn = cell(x, h0)
    torch.testing.assert_close(hn, h)
    _, _, trace = cell(x, h0, return_trace=True)
    assert trace.gates.shape == (3, 5, 8)


@pytest.mark.parametrize("cell", ["lstm", "gru", "fastrnn", "fastgrnn", "rnn", "rnn-relu"])
def test_classifier_every_cell_backward_reaches_every_parameter(cell):
    torch.manual_seed(11)
    gates = {"lstm": 4, "gru": 3, "fastrnn": 1, "fastgrnn": 1, "rnn": 1, "rnn-relu": 1}[cell]
    wx = wh = [(2 * gates, 2), (4, 4)]  # (8 * gates) x 8, for the input (8 features) and h (8 units)
    model = KPRNNClassifier(cell, 8, 8, 3, wx, wh, num_layers=2)
    logits, traces = model(torch.randn(4, 6, 8), return_trace=True)
    assert logits.shape == (4, 3) and len(traces) == 2
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_classifier_with_hkp_lowrank_and_dense_specs():
    hkp = {"kind": "hkp", "factors": [[7, 2], [4, 4]], "dense_rows": 4}  # 4 + 28 = 32 rows
    model = KPRNNClassifier("lstm", 8, 8, 3, hkp, {"kind": "lowrank", "rank": 2})
    assert model(torch.randn(2, 3, 8)).shape == (2, 3)
    dense = KPRNNClassifier("gru", 8, 8, 3, "dense", "dense")
    assert {n for n, _ in dense.named_parameters()} >= {"layers.0.wx.weight", "layers.0.wh.weight", "layers.0.bias_hn"}
    with pytest.raises(ValueError, match="unknown cell"):
        KPRNNClassifier("elman", 8, 8, 3, "dense", "dense")


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_plain_rnn_layer_is_torch_rnn(nonlinearity):
    """KPRNN / KPReluRNN with dense matrices compute torch.nn.RNN's outputs from the same weights
    (bias = b_ih + b_hh)."""
    from kpgen.train.nn import KPRNN, KPReluRNN

    torch.manual_seed(12)
    ref = torch.nn.RNN(5, 6, batch_first=True, nonlinearity=nonlinearity).double()
    layer = (KPReluRNN if nonlinearity == "relu" else KPRNN)(5, 6, "dense", "dense").double()
    with torch.no_grad():
        layer.wx.weight.copy_(ref.weight_ih_l0)
        layer.wh.weight.copy_(ref.weight_hh_l0)
        layer.bias.copy_(ref.bias_ih_l0 + ref.bias_hh_l0)
    x = torch.randn(3, 7, 5, dtype=torch.float64)
    out, h = layer(x)
    want, hn = ref(x)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(h, hn[0])
    if nonlinearity == "relu":
        assert float(out.detach().min()) == 0.0 and float(out.detach().max()) > 0.5
