"""Run by test_parquet_safety.py in an interpreter that has only the lowest pyarrow rayfun allows:
``python parquet_probe.py PARQUET_MODULE WORKDIR``. Crafts a Parquet file whose schema carries a pickled
``arrow.py_extension_type`` (CVE-2023-47248) that would create a marker file when unpickled, reads it
through rayfun's ``read_parquet`` (loaded from its file alone), then once more with pickle-based extension
types switched on (what an unpatched pyarrow did by default), and prints one JSON line of what happened."""

import importlib.util
import json
import os
import pickle
import sys

import pyarrow as pa
import pyarrow.parquet as pq


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling creates the marker: code ran


def main(module_path: str, work: str) -> None:
    spec = importlib.util.spec_from_file_location("rayfun_parquet", module_path)
    parquet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(parquet)
    marker = os.path.join(work, "code-ran")
    field = pa.field(
        "value",
        pa.binary(),
        metadata={
            b"ARROW:extension:name": b"arrow.py_extension_type",
            b"ARROW:extension:metadata": pickle.dumps(Payload(marker)),
        },
    )
    path = os.path.join(work, "crafted.state.parquet")
    pq.write_table(pa.Table.from_arrays([pa.array([b"x"], pa.binary())], schema=pa.schema([field])), path)
    data = open(path, "rb").read()
    outcome = {"pyarrow": pa.__version__}
    try:
        parquet.read_parquet(data)
        outcome["read"] = "ok"
    except Exception as exc:
        outcome["read"] = f"{type(exc).__name__}: {exc}"
    try:  # the way a restore reads a big file: from a local path, narrow columns, then row groups
        reader = parquet.ParquetFileReader(path)
        reader.read(["value"])
        list(reader.row_groups())
        reader.close()
        outcome["read_file"] = "ok"
    except Exception as exc:
        outcome["read_file"] = f"{type(exc).__name__}: {exc}"
    outcome["code_ran_in_rayfun_read"] = os.path.exists(marker)
    pa.PyExtensionType.set_auto_load(True)  # the unpatched default: proves the file really runs code
    try:
        parquet.read_parquet(data)
    except Exception:
        pass
    outcome["code_ran_with_auto_load"] = os.path.exists(marker)
    print(json.dumps(outcome), flush=True)
    # pyarrow 14 may abort at interpreter exit while its reader threads wind down ("terminate called
    # without an active exception"): the outcome is printed, so leave without that shutdown
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
