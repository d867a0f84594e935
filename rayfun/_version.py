"""The package version (read by pyproject.toml and exported as ``rayfun.__version__``)."""

__version__ = "0.2.0.dev0"
