"""``python -m examples.fraud``: the showcase end to end (see main.py)."""

from examples.fraud.main import main

main()
