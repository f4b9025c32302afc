"""A plain PyTorch recurrent classifier with one of the heads kpgen reads, for the graph readers' tests (ONNX
export and .pt2)."""

from __future__ import annotations

import torch

I, H, C, T = 6, 8, 3, 7


class Classifier(torch.nn.Module):
    """cell lstm, gru or rnn (relu: its relu form); head last, h_n (bidirectional: [forward, backward] final states
    side by side), mean, max, amax, mlp or mlp-mean."""

    def __init__(self, cell: str, head: str, bidirectional: bool = False, layers: int = 1, *,
                 batch_first: bool = True, relu: bool = False) -> None:
        super().__init__()
        kind = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
        kw = {"nonlinearity": "relu"} if relu else {}
        self.rnn = kind(I, H, num_layers=layers, batch_first=batch_first, bidirectional=bidirectional, **kw)
        feat = 2 * H if bidirectional else H
        self.head, self.batch_first = head, batch_first
        if head.startswith("mlp"):
            self.fc1 = torch.nn.Linear(feat, 5)
            self.fc = torch.nn.Linear(5, C)
        else:
            self.fc = torch.nn.Linear(feat, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, state = self.rnn(x)
        t = 1 if self.batch_first else 0
        if self.head in ("mean", "mlp-mean"):
            f = out.mean(t)
        elif self.head == "amax":
            f = out.amax(t)
        elif self.head == "max":
            f = out.max(t).values
        elif self.head == "h_n":
            h_n = state[0] if isinstance(state, tuple) else state
            f = torch.cat([h_n[-2], h_n[-1]], 1) if self.rnn.bidirectional else h_n[-1]
        else:
            f = out[:, -1] if self.batch_first else out[-1]
        if self.head.startswith("mlp"):
            f = torch.relu(self.fc1(f))
        return self.fc(f)
