"""kpgen: Kronecker-compressed recurrent networks to bit-exact int8 C for Cortex-M."""

__version__ = "0.1.0"


class KpgenError(Exception):
    """A user's mistake: reported as one line on stderr with exit status 2."""
