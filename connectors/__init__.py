"""Ingresses and egresses for rayfun, built only on the public contracts in ``rayfun.io``.

- ``connectors.memory``: in-memory source and sink, for tests and notebooks.
- ``connectors.kafka``: Kafka ingress and egress (confluent-kafka), exactly-once by transactions.
- ``connectors.files``: files in / files out through fsspec.
- ``connectors.http``: StateFun-playground-style HTTP ingress and egress.
"""
