"""Training-side layers: Kronecker-product (and baseline) matrices, recurrent cells, classifiers."""

from kpgen.train.nn.kp import KPLinear, kp_apply, kp_apply_n, kp_macs, kron_chain
from kpgen.train.nn.matrix import DenseLinear, HKPLinear, LowRankLinear, make_matrix, matrix_spec
from kpgen.train.nn.rnn import (
    CELLS,
    Bidirectional,
    KPFastGRNN,
    KPFastRNN,
    KPGRU,
    KPLSTM,
    KPLSTMClassifier,
    KPRNNClassifier,
    LSTMTrace,
    RNNTrace,
)

__all__ = [
    "KPLinear", "kp_apply", "kp_apply_n", "kp_macs", "kron_chain",
    "HKPLinear", "LowRankLinear", "DenseLinear", "make_matrix", "matrix_spec",
    "CELLS", "Bidirectional", "KPLSTM", "KPGRU", "KPFastRNN", "KPFastGRNN",
    "KPRNNClassifier", "KPLSTMClassifier", "LSTMTrace", "RNNTrace",
]
