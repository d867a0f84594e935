"""The CLI's end-to-end tests use the Kafka broker and the SDK interpreter of the connector and remote tests."""

from tests.connectors.conftest import kafka_broker  # noqa: F401 (a fixture)
from tests.remote.conftest import sdk_python  # noqa: F401 (a fixture)
