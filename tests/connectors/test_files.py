"""FileSource and FileSink on a local directory and on fsspec's memory:// filesystem."""

from __future__ import annotations

import json
import pickle
import uuid

import fsspec
import pytest

from rayfun.connectors.files import FileSink, FileSource, read_sink_records
from rayfun.io import DeadLetter
from rayfun.messages import EgressMessage, Message, kafka_egress_message
from rayfun.types import IntType, StringType, make_json_type

pytestmark = pytest.mark.timeout(60)

Tx = make_json_type("example/Transaction")


def _drain(part) -> list:
    out: list = []
    while True:
        batch = part.next_rows()
        if batch is None:
            return out
        out.extend(batch)


@pytest.fixture(params=["local", "memory"])
def base(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path)
        return
    root = f"memory://rayfun-test-{uuid.uuid4().hex[:8]}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def _write(url: str, text: str) -> None:
    with fsspec.open(url, "wb") as f:
        f.write(text.encode("utf-8"))


def test_json_lines_routed_by_field(base):
    _write(f"{base}/in/a.jsonl", "".join(json.dumps({"account": f"acc{i}", "amount": i}) + "\n" for i in range(3)))
    _write(f"{base}/in/b.jsonl", '{"account": "acc9", "amount": 9}\nnot json\n\n{"amount": 1}\n{"account": 5}')
    source = FileSource("example/tx", f"{base}/in/*.jsonl", "example/fraud", key="account", value_type=Tx.typename)
    source = pickle.loads(pickle.dumps(source))
    assert [f.rsplit("/", 1)[-1] for f in source.files] == ["a.jsonl", "b.jsonl"]
    items = _drain(source.build_partition("0", None))
    rows = [i for i in items if type(i) is tuple]
    dead = [i for i in items if isinstance(i, DeadLetter)]
    assert [r[1] for r in rows] == ["acc0", "acc1", "acc2", "acc9", "5"]
    assert rows[0] == ("example/fraud", "acc0", None, Tx.typename, b'{"account": "acc0", "amount": 0}')
    assert Tx.serializer().deserialize(rows[3][4]) == {"account": "acc9", "amount": 9}
    assert len(dead) == 2 and "cannot be routed" in dead[0].reason and dead[0].payload == b"not json"
    assert "no field 'account'" in dead[1].reason and dead[1].source == "example/tx"


def test_builtin_types_parse_text_and_key_function(base):
    _write(f"{base}/n.txt", "a,1\nb,2\nc,x\n")
    source = FileSource(
        "example/n",
        f"{base}/n.txt",
        ["example/x", "example/y"],
        key=lambda line: line.split(",")[0],
        value=lambda line: line.split(",")[1],
        value_type=IntType.typename,
    )
    items = _drain(source.build_partition("0", None))
    assert items[:4] == [
        ("example/x", "a", None, IntType.typename, 1),
        ("example/y", "a", None, IntType.typename, 1),
        ("example/x", "b", None, IntType.typename, 2),
        ("example/y", "b", None, IntType.typename, 2),
    ]
    assert len(items) == 5 and isinstance(items[4], DeadLetter)
    assert IntType.typename in items[4].reason and items[4].payload == b"c,x"


def test_value_field(base):
    _write(f"{base}/v.jsonl", '{"id": "a", "n": 3, "o": {"x": 1}}\n{"id": "b", "n": "4"}\n{"id": "c", "n": 1.5}\n')
    ints = FileSource("example/n", f"{base}/v.jsonl", "example/x", key="id", value="n", value_type=IntType.typename)
    items = _drain(ints.build_partition("0", None))
    assert [i[4] for i in items[:2]] == [3, 4] and isinstance(items[2], DeadLetter)
    objs = FileSource("example/n", f"{base}/v.jsonl", "example/x", key="id", value="o", value_type=Tx.typename)
    items = _drain(objs.build_partition("0", None))
    assert items[0][4] == b'{"x": 1}' and "no field 'o'" in items[1].reason


def test_resume_reads_exactly_the_rest(base):
    lines = [f"id{i % 4} {i}" for i in range(1000)]
    for k in range(3):
        _write(f"{base}/part{k}.txt", "\n".join(lines[k * 400 : (k + 1) * 400]) + ("\n" if k < 2 else ""))
    urls = [f"{base}/part{k}.txt" for k in range(3)]
    source = FileSource("example/in", urls, "example/fn", key=lambda l: l.split()[0], batch_size=70)
    part = source.build_partition("0", None)
    first: list = []
    while len(first) < 450:  # across the first file boundary
        first.extend(part.next_rows())
    position = part.snapshot()
    assert position[0] == 1
    part.next_rows()  # read on, then "crash"
    part.close()
    resumed = source.build_partition("0", position)
    rest = _drain(resumed)
    assert resumed.snapshot() == (3, 0) and resumed.next_rows() is None
    assert [r[4] for r in first + rest] == lines  # no line lost or repeated, in order


def test_partitions_split_files(base):
    for k in range(5):
        _write(f"{base}/f{k}.txt", f"k{k} v\n")
    source = FileSource("example/in", f"{base}/f*.txt", "example/fn", key=lambda l: l.split()[0], partitions=2)
    assert source.partitions() == ["0", "1"]
    got = {p: [r[1] for r in _drain(source.build_partition(p, None))] for p in source.partitions()}
    assert got == {"0": ["k0", "k2", "k4"], "1": ["k1", "k3"]}
    batch = source.build_partition("1", None).next_batch()
    assert (
        isinstance(batch[0], Message) and batch[0].payload == "k1 v" and batch[0].value_type_name == StringType.typename
    )


def test_missing_file_is_a_clear_error(base):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        FileSource("example/in", f"{base}/nothing-here.txt", "example/fn", key="id")


def test_sink_is_idempotent_per_epoch(base):
    sink = FileSink("example/alerts", f"{base}/out")
    part = sink.build_partition(0, 2)
    epoch1 = [
        EgressMessage("example/alerts", Tx.typename, Tx.serializer().serialize({"alert": 1})),
        EgressMessage("example/alerts", IntType.typename, 7),
        kafka_egress_message("example/alerts", "alerts", "hi", key="k"),
        EgressMessage("example/alerts", "example/Blob", b"\xff\x00"),
    ]
    part.write_batch(epoch1, 1)
    part.write_batch(epoch1, 1)  # the same epoch again: the same file, written again
    again = sink.build_partition(0, 2)  # after a "crash"
    again.write_batch(epoch1, 1)
    sink.build_partition(1, 2).write_batch([EgressMessage("example/alerts", StringType.typename, "b")], 1)
    part.write_batch([EgressMessage("example/alerts", StringType.typename, "later")], 2)
    fs, path = fsspec.core.url_to_fs(f"{base}/out")
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    assert names == [
        "part-00000-000000000001.jsonl",
        "part-00000-000000000002.jsonl",
        "part-00001-000000000001.jsonl",
    ]  # no temporary file left behind
    records = read_sink_records(f"{base}/out")
    assert [r["value"] if "value" in r else r["value_base64"] for r in records] == [
        {"alert": 1},
        7,
        {"topic": "alerts", "key": "k", "value": "hi"},
        "/wA=",
        "later",
        "b",
    ]
    assert records[0] == {"egress": "example/alerts", "type": Tx.typename, "value": {"alert": 1}}


def test_sink_without_checkpoints_writes_a_file_per_batch(base):
    sink = FileSink("example/alerts", f"{base}/live", delivery="at-least-once")
    part = sink.build_partition(0, 1)
    part.write_batch([EgressMessage("example/alerts", StringType.typename, "a")], -1)
    part.write_batch([EgressMessage("example/alerts", StringType.typename, "b")], -1)
    part.write_batch([], -1)
    assert sorted(r["value"] for r in read_sink_records(f"{base}/live")) == ["a", "b"]
