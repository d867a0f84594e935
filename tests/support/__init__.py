"""What the tests share: real servers on loopback (``servers``), checkpoint models and random state
(``checkpoints``), fakes of a shard's services for the stage tests (``fakes``). Programs that tests run
in another interpreter (SDK servers, the parquet probe, the chaos driver) stay beside their tests."""
