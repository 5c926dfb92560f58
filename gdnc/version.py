"""gdnc's version: one place, read by the package, the generated kernels' headers and pyproject.toml."""
__version__ = "0.1.0"
