"""Dense to compressed: nearest Kronecker product, torch state-dict import, each method's init, pruning
schedule, the whole job on real digits (tiny), and the loader's refusal of the variants it cannot emit."""

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from kpgen import KpgenError, cells
from kpgen.cli import main
from kpgen.frontend.load import load_checkpoint
from kpgen.reference import floatmodel
from kpgen.train import make_checkpoint, save_checkpoint
from kpgen.train.compress import (
    MagnitudePruner,
    build_compressed,
    compress_checkpoint,
    from_torch_state_dict,
    nearest_kp,
    nearest_kp_n,
    read_source,
    rearrange,
    small_hidden_size,
    sparsity_at,
    spread_over_gates,
)
from kpgen.train.loop import model_from_checkpoint
from kpgen.train.nn import KPRNNClassifier

F64 = torch.float64


def test_nearest_kp_recovers_an_exact_kronecker_product():
    torch.manual_seed(0)
    a0, b0 = torch.randn(4, 3, dtype=F64), torch.randn(5, 2, dtype=F64)
    w = torch.kron(a0, b0)
    assert int(torch.linalg.matrix_rank(rearrange(w, (4, 3), (5, 2)))) == 1
    a, b = nearest_kp(w, (4, 3), (5, 2))
    torch.testing.assert_close(torch.kron(a, b), w, rtol=1e-10, atol=1e-10)
    # the factors are a0, b0 up to a scalar c and 1/c
    c = a[0, 0] / a0[0, 0]
    torch.testing.assert_close(a, c * a0)
    torch.testing.assert_close(b, b0 / c)


def test_nearest_kp_minimises_the_frobenius_error():
    torch.manual_seed(1)
    w = torch.randn(12, 10, dtype=F64)
    a, b = nearest_kp(w, (3, 5), (4, 2))
    best = torch.linalg.norm(w - torch.kron(a, b))
    for _ in range(200):  # random factors, and small perturbations of the optimum
        ra, rb = torch.randn(3, 5, dtype=F64), torch.randn(4, 2, dtype=F64)
        assert best <= torch.linalg.norm(w - torch.kron(ra, rb))
        pa, pb = a + 0.01 * torch.randn_like(a), b + 0.01 * torch.randn_like(b)
        assert best <= torch.linalg.norm(w - torch.kron(pa, pb)) + 1e-12
    # ...and it equals the best rank-one error of R(W): sqrt(sum of the other singular values squared)
    s = torch.linalg.svdvals(rearrange(w, (3, 5), (4, 2)))
    torch.testing.assert_close(best, s[1:].pow(2).sum().sqrt())


def test_nearest_kp_n_exact_for_three_factors():
    torch.manual_seed(2)
    fs = [torch.randn(2, 3, dtype=F64), torch.randn(3, 2, dtype=F64), torch.randn(2, 2, dtype=F64)]
    w = torch.kron(torch.kron(fs[0], fs[1]), fs[2])
    got = nearest_kp_n(w, [(2, 3), (3, 2), (2, 2)])
    torch.testing.assert_close(torch.kron(torch.kron(got[0], got[1]), got[2]), w, rtol=1e-10, atol=1e-10)


class TorchNet(nn.Module):
    """The kind of model users bring: torch.nn.LSTM / GRU, then nn.Linear on the last step."""

    def __init__(self, cell=nn.LSTM, inp=8, hid=8, classes=10, layers=1, bidirectional=False):
        super().__init__()
        self.rnn = cell(inp, hid, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(hid * (2 if bidirectional else 1), classes)
        self.hid, self.bidir = hid, bidirectional

    def forward(self, x):
        out, h = self.rnn(x)
        h = h[0] if isinstance(h, tuple) else h
        feats = torch.cat([h[-2], h[-1]], -1) if self.bidir else out[:, -1]
        return self.fc(feats)


@pytest.mark.parametrize("cell,layers,bidir", [(nn.LSTM, 2, False), (nn.GRU, 1, False), (nn.GRU, 2, True),
                                               (nn.LSTM, 1, True)])
def test_torch_state_dict_import_computes_the_same(cell, layers, bidir):
    torch.manual_seed(3)
    net = TorchNet(cell, layers=layers, bidirectional=bidir).double()
    model = from_torch_state_dict(net.state_dict()).double()
    assert model.cell == ("lstm" if cell is nn.LSTM else "gru") and model.num_layers == layers
    x = torch.randn(4, 6, 8, dtype=F64)
    torch.testing.assert_close(model(x), net(x))


@pytest.mark.parametrize("nonlinearity,layers,bidir", [("tanh", 1, False), ("relu", 2, False), ("tanh", 2, True),
                                                        ("relu", 1, True)])
def test_torch_rnn_state_dict_import(nonlinearity, layers, bidir, tmp_path):
    """An nn.RNN classifier's state dict: read as the tanh RNN, or as the relu one when the file says so next to
    the state dict ({"state_dict": ..., "nonlinearity": "relu"}); the kpgen model computes the same logits."""
    torch.manual_seed(4)
    net = TorchNet(lambda *a, **k: nn.RNN(*a, nonlinearity=nonlinearity, **k), layers=layers, bidirectional=bidir)
    net = net.double()
    torch.save({"state_dict": net.state_dict(), "nonlinearity": nonlinearity}, tmp_path / "rnn.pt")
    model, _ = read_source(tmp_path / "rnn.pt")
    assert model.cell == ("rnn-relu" if nonlinearity == "relu" else "rnn") and model.num_layers == layers
    x = torch.randn(4, 6, 8, dtype=F64)
    torch.testing.assert_close(model.double()(x), net(x))
    if nonlinearity == "tanh":  # the default for a bare state dict
        assert from_torch_state_dict(net.state_dict()).cell == "rnn"
    with pytest.raises(KpgenError, match=r"^m\.pt: nonlinearity 'sigmoid' is not tanh or relu; give the nn\.RNN's"):
        from_torch_state_dict(net.state_dict(), "m.pt", "sigmoid")


def test_torch_state_dict_errors_are_one_line():
    sd = TorchNet().state_dict()
    cases = [
        ({k: v for k, v in sd.items() if not k.startswith("fc.")}, "expected one Linear head"),
        ({**sd, "fc2.weight": torch.zeros(3, 8), "fc2.bias": torch.zeros(3)}, "found fc, fc2"),
        ({**sd, "emb.weight": torch.zeros(3)}, "unexpected tensor"),
        ({**sd, "rnn.weight_hr_l0": torch.zeros(2, 8)}, "proj_size"),
        ({"fc.weight": torch.zeros(3, 8)}, "no weight_ih_l0"),
    ]
    for bad, message in cases:
        with pytest.raises(KpgenError, match=message) as e:
            from_torch_state_dict(bad, "m.pt")
        assert "\n" not in str(e.value) and str(e.value).startswith("m.pt: ")


def dense_source(cell="lstm", hid=16, bidirectional=False):
    torch.manual_seed(4)
    return KPRNNClassifier(cell, 8, hid, 10, "dense", "dense", bidirectional=bidirectional)


def test_kp_init_is_the_nearest_kp_of_every_matrix_and_keeps_the_rest():
    src = dense_source()
    model = build_compressed(src, "kp", 10)
    assert model.wx_specs[0]["kind"] == "kp" and len(model.wx_specs[0]["factors"]) == 2
    for (name, m), (_, d) in zip(model.matrices(), src.matrices(), strict=True):
        a, b = nearest_kp(d.weight.detach().double(), *m.factor_shapes)
        torch.testing.assert_close(torch.kron(a, b).float(), m.dense().detach(), rtol=1e-5, atol=1e-6)
        assert m.weight_params <= d.weight.numel() // 10, name
    assert torch.equal(model.layers[0].bias, src.layers[0].bias)
    assert torch.equal(model.head.weight, src.head.weight)


def test_hkp_dense_rows_spread_over_the_gates_where_they_divide():
    """`kpgen compress --method hkp`: an LSTM's Wh keeps 4 dense rows, one per gate (the first unit of each), and
    starts from exactly those rows of the dense W; its Wx's 2 rows do not divide over 4 gates and stay on top."""
    src = dense_source("lstm")
    model = build_compressed(src, "hkp", 8)
    wx, wh = model.layers[0].wx_spec, model.layers[0].wh_spec
    assert wh["dense_rows"] == 4 and wh["top_groups"] == 4
    assert wx["dense_rows"] == 2 and "top_groups" not in wx
    w = src.layers[0].wh.weight.detach()
    mat = model.layers[0].wh
    torch.testing.assert_close(mat.dense_weight.detach(), w[[0, 16, 32, 48]])
    torch.testing.assert_close(mat.dense().detach()[[0, 16, 32, 48]], w[[0, 16, 32, 48]])
    x = torch.randn(3, 16)
    torch.testing.assert_close(mat(x), x @ mat.dense().t(), rtol=1e-5, atol=1e-5)
    # the spec helper: HKP specs only, only where the gates divide the dense rows, by default only the LSTM's
    spec = {"kind": "hkp", "factors": [[15, 2], [4, 8]], "dense_rows": 4}
    assert spread_over_gates(spec, "lstm") == {**spec, "top_groups": 4}
    assert spread_over_gates({**spec, "top_groups": 4}, "lstm", "top") == spec
    assert spread_over_gates(spec, "gru") == spec and spread_over_gates(spec, "gru", "gates") == spec  # 3 ∤ 4
    assert spread_over_gates({**spec, "dense_rows": 6}, "gru", "gates")["top_groups"] == 3
    assert spread_over_gates(spec, "fastrnn", "gates") == spec
    kp = {"kind": "kp", "factors": [[4, 4], [4, 4]]}
    assert spread_over_gates(kp, "lstm") == kp
    with pytest.raises(ValueError, match="unknown HKP row placement 'middle'"):
        spread_over_gates(spec, "lstm", "middle")


def test_hkp_rows_option_places_the_dense_rows():
    """--hkp-rows: auto keeps a GRU's dense rows on top, gates spreads them; top keeps an LSTM's on top."""
    from kpgen.train.compress import MatrixControl

    gru = dense_source("gru", hid=24)  # Wx: 3 dense rows, Wh: 4
    auto = build_compressed(gru, "hkp", 8)
    spread = build_compressed(gru, "hkp", 8, control=MatrixControl(hkp_rows="gates"))
    rows = [(m.layers[0].wx_spec.get("dense_rows", 0), m.layers[0].wh_spec.get("dense_rows", 0))
            for m in (auto, spread)]
    assert rows[0] == rows[1] and any(r % 3 == 0 and r for r in rows[0])  # the same rows, one count divisible
    assert all("top_groups" not in s for s in (auto.layers[0].wx_spec, auto.layers[0].wh_spec))
    assert any(s.get("top_groups") == 3 for s in (spread.layers[0].wx_spec, spread.layers[0].wh_spec))
    top = build_compressed(dense_source("lstm"), "hkp", 8, control=MatrixControl(hkp_rows="top"))
    assert all("top_groups" not in s for s in (top.layers[0].wx_spec, top.layers[0].wh_spec))


def test_hkp_lowrank_small_and_prune_inits():
    src = dense_source("gru")
    w = src.layers[0].wh.weight.detach().double()
    hkp = build_compressed(src, "hkp", 8)
    mat = hkp.layers[0].wh
    assert mat.weight_params <= w.numel() // 8
    if hasattr(mat, "dense_rows"):
        torch.testing.assert_close(mat.dense_weight.double(), w[mat.stacked_rows()[: mat.dense_rows]])
    low = build_compressed(src, "lowrank", 4)
    r = low.layers[0].wh.rank
    assert r == (w.numel() // 4) // sum(w.shape) == 3
    thin = build_compressed(src, "lowrank", 8)  # Wx 48x8: rank 1 (56) overshoots its 48; Wh gives way: 2 -> 1
    assert thin.layers[0].wx.rank == 1 and thin.layers[0].wh.rank == 1
    assert 56 + 64 <= (48 * 8 + 48 * 16) // 8
    s = torch.linalg.svdvals(w)
    err = torch.linalg.norm(w - low.layers[0].wh.dense().detach().double())
    torch.testing.assert_close(err, s[r:].pow(2).sum().sqrt(), rtol=1e-4, atol=1e-5)  # Eckart-Young
    assert torch.equal(low.layers[0].bias_hn, src.layers[0].bias_hn)
    small = build_compressed(src, "small", 8)
    g = 3
    total = lambda h: g * h * (8 + h)  # noqa: E731
    assert total(small.hidden_size) <= total(16) / 8 < total(small.hidden_size + 1)
    assert small_hidden_size("lstm", 28, 128, 1, False, 1.0) == 128
    pruned = build_compressed(src, "prune", 8)
    assert torch.equal(pruned.layers[0].wh.weight, src.layers[0].wh.weight)
    with pytest.raises(KpgenError, match="unknown method"):
        build_compressed(src, "magic", 8)


def test_zhu_gupta_schedule_and_pruner():
    assert sparsity_at(0, 100, 0.9) == 0.0
    assert sparsity_at(60, 100, 0.9) == pytest.approx(0.9) and sparsity_at(100, 100, 0.9) == pytest.approx(0.9)
    values = [sparsity_at(t, 100, 0.9) for t in range(101)]
    assert values == sorted(values)
    assert values[10] - values[0] > values[50] - values[40]  # prunes fast early, slowly late (cubic)
    model = dense_source()
    pruner = MagnitudePruner(model, 0.9)
    pruner.prune_to(0.9)
    pruner.apply()
    for _, m in model.matrices():
        kept = int((m.weight != 0).sum())
        assert kept == m.weight.numel() - round(0.9 * m.weight.numel())


def save_torch_model(tmp_path, cell=nn.LSTM, **kw):
    torch.manual_seed(5)
    path = tmp_path / "dense.pt"
    torch.save(TorchNet(cell, **kw).state_dict(), path)
    return path


def test_compress_kp_lstm_gives_a_v1_checkpoint(tmp_path):
    src = save_torch_model(tmp_path)
    lines = []
    ck = compress_checkpoint(src, "kp", 8, dataset="digits", epochs=1, max_train=128, log=lines.append)
    assert "method" not in ck["arch"] and ck["arch"]["cell"] == "lstm"
    assert ck["meta"]["method"] == "kp" and ck["meta"]["matrix_compression"] >= 8
    assert any("before fine-tuning" in line for line in lines)
    save_checkpoint(ck, tmp_path / "kp.pt")
    m = load_checkpoint(tmp_path / "kp.pt")
    assert m.input_size == 8 and m.num_classes == 10 and m.layers[0].wx.params <= 32 * 8 // 8
    again, meta = read_source(tmp_path / "kp.pt")  # a v1 checkpoint is a valid source too
    x = torch.randn(2, 8, 8)
    torch.testing.assert_close(again(x), model_from_checkpoint(ck)(x))
    assert meta["dataset"] == "digits"


@pytest.mark.parametrize("method", ["prune", "lowrank", "small", "hkp"])
def test_compress_variants_load_or_are_refused(tmp_path, method):
    """Every compressed variant loads into the float IR with the torch model's logits, except low rank, which
    kpgen has no kernel for and refuses in one line."""
    src = save_torch_model(tmp_path)
    ck = compress_checkpoint(src, method, 4, dataset="digits", epochs=1, max_train=64, log=lambda s: None)
    assert ck["arch"]["method"] == method and ck["meta"]["matrix_params"] <= ck["meta"]["matrix_params_dense"] / 4
    again = model_from_checkpoint(ck)  # the training side reads its own variants back
    assert sorted(again.state_dict()) == sorted(ck["state_dict"])
    if method == "prune":
        nz = sum(int((m.weight != 0).sum()) for _, m in again.matrices())
        assert nz == ck["meta"]["matrix_params"]
    save_checkpoint(ck, tmp_path / "c.pt")
    if method == "lowrank":
        with pytest.raises(KpgenError, match="is a low-rank matrix, which kpgen cannot emit") as e:
            load_checkpoint(tmp_path / "c.pt")
        assert "\n" not in str(e.value)
        return
    ir = load_checkpoint(tmp_path / "c.pt")
    x = torch.randn(3, 8, 8)
    with torch.no_grad():
        want = again(x).double().numpy()
    np.testing.assert_allclose(floatmodel.float_forward(ir, x.double().numpy()), want, atol=1e-4, rtol=0)
    assert ir.meta["method"] == method


def test_gru_kp_variant_and_kpgen_dense_source(tmp_path):
    dense = dense_source("gru", hid=8)
    cal = {"input_absmax": 1.0, "state_absmax": [1.0], "gate_absmax": [1.0]}
    save_checkpoint(make_checkpoint(dense, cal, {"dataset": "digits"}), tmp_path / "dense.pt")
    ck = compress_checkpoint(tmp_path / "dense.pt", "kp", 4, epochs=1, max_train=64, log=lambda s: None)
    assert ck["arch"]["cell"] == "gru" and ck["arch"]["method"] == "kp" and ck["meta"]["dataset"] == "digits"
    save_checkpoint(ck, tmp_path / "gru.pt")
    ir = load_checkpoint(tmp_path / "gru.pt")
    assert cells.of(ir.layers[0]).name == "gru" and not ir.layers[0].wx.is_dense


def test_compress_errors(tmp_path):
    src = save_torch_model(tmp_path)
    with pytest.raises(KpgenError, match="names no dataset"):
        compress_checkpoint(src, "kp", 8, log=lambda s: None)
    with pytest.raises(KpgenError, match="has 28 and 10"):
        compress_checkpoint(src, "kp", 8, dataset="mnist", log=lambda s: None)
    with pytest.raises(KpgenError, match="even rank 1 everywhere needs more than the budget"):
        compress_checkpoint(src, "lowrank", 8, dataset="digits", log=lambda s: None)
    with pytest.raises(KpgenError, match="no such file"):
        compress_checkpoint(tmp_path / "nope.pt", "kp", 8, log=lambda s: None)


def test_cli_compress(tmp_path):
    src = save_torch_model(tmp_path)
    out = tmp_path / "kp.pt"
    args = ["compress", str(src), "--method", "kp", "--ratio", "8", "--dataset", "digits", "--epochs", "1",
            "-o", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and out.exists()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "exists" in again.output
