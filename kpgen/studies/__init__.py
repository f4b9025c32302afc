"""Studies on top of the library: the benchmark and the paper's reproduction."""
