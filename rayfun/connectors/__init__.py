"""Ingresses and egresses for rayfun, built only on the public contracts in ``rayfun.io``.

- ``rayfun.connectors.memory``: in-memory source and sink, for tests and notebooks.
- ``rayfun.connectors.kafka``: Kafka ingress and egress (confluent-kafka), exactly-once by transactions.
- ``rayfun.connectors.files``: files in / files out through fsspec.
- ``rayfun.connectors.playground``: StateFun's playground HTTP ingress (PUT) and egress (GET), exactly-once.

The core never imports this package: a connector is a plug-in on ``rayfun.io``.
"""
