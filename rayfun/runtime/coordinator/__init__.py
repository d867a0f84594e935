"""The coordinator: one Ray actor per application that starts the shards, hands out source partitions,
triggers checkpoints, watches the shards, and on any failure rolls every shard back to the last complete
checkpoint. It also owns the driver's channel (``app.send``), so messages sent from a notebook since the
last checkpoint are re-sent after a rollback instead of being lost.

The actor (``actor.py``) is a thin composition of one module per job: ``driver_channel``, ``checkpoints``
(scheduling and failures), ``supervisor`` (failure detection and recovery) and ``idle`` (pure functions of
the shards' statuses). ``fleet`` holds what they share; ``config`` the application's configuration.
"""

from .actor import STOP_TIMEOUT_S, Coordinator
from .checkpoints import CheckpointAbandoned
from .config import AppConfig

__all__ = ["STOP_TIMEOUT_S", "AppConfig", "CheckpointAbandoned", "Coordinator"]
