"""The runtime: key-group partitioning, shard actors, timers, the coordinator."""
