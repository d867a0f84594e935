"""Run by test_parquet_safety.py in an interpreter that has only the lowest pyarrow rayfun allows:
``python parquet_probe.py FILEFORMAT_MODULE WORKDIR``. Crafts a Parquet file and an Arrow IPC file whose
schemas carry a pickled ``arrow.py_extension_type`` (CVE-2023-47248) that would create a marker file when
unpickled, reads them through rayfun's ``read_parquet`` and ``read_arrow`` (loaded from its file alone),
then once more with pickle-based extension types switched on (what an unpatched pyarrow did by default),
and prints one JSON line of what happened."""

import importlib.util
import json
import os
import pickle
import sys

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling creates the marker: code ran


def main(module_path: str, work: str) -> None:
    spec = importlib.util.spec_from_file_location("rayfun_fileformat", module_path)
    fileformat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fileformat)
    markers = {kind: os.path.join(work, f"code-ran-{kind}") for kind in ("parquet", "arrow")}

    def crafted(kind: str) -> pa.Table:
        field = pa.field(
            "value",
            pa.binary(),
            metadata={
                b"ARROW:extension:name": b"arrow.py_extension_type",
                b"ARROW:extension:metadata": pickle.dumps(Payload(markers[kind])),
            },
        )
        return pa.Table.from_arrays([pa.array([b"x"], pa.binary())], schema=pa.schema([field]))

    path = os.path.join(work, "crafted.state.parquet")
    pq.write_table(crafted("parquet"), path)
    data = {"parquet": open(path, "rb").read()}
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, crafted("arrow").schema) as writer:
        writer.write_table(crafted("arrow"))
    data["arrow"] = sink.getvalue().to_pybytes()
    readers = {"parquet": fileformat.read_parquet, "arrow": fileformat.read_arrow}
    outcome = {"pyarrow": pa.__version__}
    for kind, read in readers.items():
        try:
            read(data[kind])
            outcome[f"read_{kind}"] = "ok"
        except Exception as exc:
            outcome[f"read_{kind}"] = f"{type(exc).__name__}: {exc}"
    try:  # the way a restore reads a big file: from a local path, narrow columns, then row groups
        reader = fileformat.ParquetFileReader(path)
        reader.read(["value"])
        list(reader.row_groups())
        reader.close()
        outcome["read_file"] = "ok"
    except Exception as exc:
        outcome["read_file"] = f"{type(exc).__name__}: {exc}"
    outcome["code_ran_in_rayfun_read"] = {kind: os.path.exists(m) for kind, m in markers.items()}
    pa.PyExtensionType.set_auto_load(True)  # the unpatched default: proves the files really run code
    for kind, read in readers.items():
        try:
            read(data[kind])
        except Exception:
            pass
    outcome["code_ran_with_auto_load"] = {kind: os.path.exists(m) for kind, m in markers.items()}
    print(json.dumps(outcome), flush=True)
    # pyarrow 14 may abort at interpreter exit while its reader threads wind down ("terminate called
    # without an active exception"): the outcome is printed, so leave without that shutdown
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
