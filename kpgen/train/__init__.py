"""Training side: fit a KP-LSTM, calibrate it, and write the kpgen checkpoint."""

from kpgen.train.loop import DEFAULT_CONFIG, make_checkpoint, save_checkpoint, train_model

__all__ = ["DEFAULT_CONFIG", "make_checkpoint", "save_checkpoint", "train_model"]
