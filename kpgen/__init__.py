"""kpgen: Kronecker-compressed recurrent networks to bit-exact int8 C for Cortex-M."""

__version__ = "0.1.0"


class KpgenError(Exception):
    """A user's mistake: reported as one line on stderr with exit status 2."""


def escape(text: str) -> str:
    """User text made safe to print on one line: newlines, escape sequences and other unprintable characters
    (and undecodable bytes of file names) shown as Python escapes, so they cannot forge lines or drive a terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in str(text))


_API = ("from_torch", "compress", "emit", "run", "format_report")


def __getattr__(name: str):
    """kpgen.from_torch, kpgen.compress, kpgen.emit, kpgen.run, kpgen.format_report: kpgen.api's functions,
    imported on first use so that `import kpgen` stays light (no torch)."""
    if name in _API:
        from kpgen import api

        return getattr(api, name)
    raise AttributeError(f"module 'kpgen' has no attribute {name!r}")
