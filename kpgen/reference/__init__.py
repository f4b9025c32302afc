"""Reference models: the float model (the accuracy baseline) and the integer golden model (the specification of
every C kernel)."""
