"""Front end: files in (kpgen checkpoints, torch state dicts, datasets, the user's data) -> float IR."""
