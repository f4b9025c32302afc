"""Training-side layers: Kronecker-product (and baseline) matrices, recurrent cells, classifiers."""

from kpgen.train.nn.kp import KPLinear, kp_apply, kp_apply_n, kp_macs, kron_chain
from kpgen.train.nn.matrix import (
    DenseLinear,
    HKPLinear,
    LowRankLinear,
    make_matrix,
    matrix_spec,
)
from kpgen.train.nn.rnn import (
    KPGRU,
    KPLSTM,
    KPRNN,
    Bidirectional,
    KPFastGRNN,
    KPFastRNN,
    KPLSTMClassifier,
    KPReluRNN,
    KPRNNClassifier,
    LSTMTrace,
    RNNTrace,
    layer_class,
)

__all__ = [
    "KPGRU",
    "KPLSTM",
    "KPRNN",
    "Bidirectional",
    "DenseLinear",
    "HKPLinear",
    "KPFastGRNN",
    "KPFastRNN",
    "KPLSTMClassifier",
    "KPLinear",
    "KPRNNClassifier",
    "KPReluRNN",
    "LSTMTrace",
    "LowRankLinear",
    "RNNTrace",
    "kp_apply",
    "kp_apply_n",
    "kp_macs",
    "kron_chain",
    "layer_class",
    "make_matrix",
    "matrix_spec",
]
