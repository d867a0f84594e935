"""rayfun's examples, runnable as modules: ``python -m examples.fraud``."""
