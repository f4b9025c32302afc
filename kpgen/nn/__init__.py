"""Training-side layers: Kronecker-product linear maps and KP-LSTM networks."""

from kpgen.nn.kp import KPLinear, kp_apply
from kpgen.nn.rnn import KPLSTM, KPLSTMClassifier, LSTMTrace

__all__ = ["KPLinear", "kp_apply", "KPLSTM", "KPLSTMClassifier", "LSTMTrace"]
