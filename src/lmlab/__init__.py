"""lmlab: a laboratory for small-scale language-model science."""

__version__ = "0.1.0"
