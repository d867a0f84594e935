"""A StateFun application shaped like the StateFun playground's Python showcase, written once for the
official SDK (``functions.py``, served by ``serve.py``) and embedded in rayfun (``functions_embedded.py``,
the same file but for its import line); ``module.yaml`` wires it to Kafka in the legacy 3.0 format."""
