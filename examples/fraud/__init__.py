"""The fraud-detection showcase (StateFun's): ``python -m examples.fraud`` (see main.py)."""
