"""``rayfun checkpoints`` / ``rayfun state`` on the checkpoints of a real application (written once per
module), on copies damaged on purpose, on S3, and on signed checkpoints."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime

import pyarrow.parquet as pq
import pytest

import rayfun
from rayfun import IntType, LongType, StatefulFunctions, StringType, ValueSpec, make_json_type, simple_type
from rayfun.checkpoint import CheckpointStore, StateDelta, StateLayout
from rayfun.cli import main
from rayfun.cli.inspect import CELL_WIDTH, human_size, parse_storage_options

pytestmark = pytest.mark.timeout(180)

ROOT = pathlib.Path(__file__).resolve().parents[2]
COUNTER, PROFILE = "inspect/counter", "inspect/profile"
LONG_NAME = "x" * 100


def functions() -> StatefulFunctions:
    doc = make_json_type("inspect.types/doc")
    tag = simple_type("inspect.types/tag", bytes, bytes)  # neither built in nor JSON: shown as bytes
    fns = StatefulFunctions()

    @fns.bind(COUNTER, specs=[ValueSpec("count", IntType)])
    def counter(context, message):
        context.storage.count = (context.storage.count or 0) + message.as_int()

    @fns.bind(
        PROFILE,
        specs=[
            ValueSpec("name", StringType),
            ValueSpec("visits", LongType),
            ValueSpec("doc", doc),
            ValueSpec("tag", tag),
        ],
    )
    def profile(context, message):
        name = message.as_string()
        context.storage.name = name
        context.storage.visits = (context.storage.visits or 0) + 1
        context.storage.doc = {"name": name[:5], "tags": ["a", "b"]}
        context.storage.tag = b"\x00\xff" + name[:2].encode()

    return fns


def profile_state(name: str, visits: int = 1) -> dict:
    return {
        "name": name,
        "visits": visits,
        "doc": {"name": name[:5], "tags": ["a", "b"]},
        "tag": {"typename": "inspect.types/tag", "base64": base64.b64encode(b"\x00\xff" + name[:2].encode()).decode()},
    }


@dataclass
class Written:
    url: str
    ids: list[int]  # the three checkpoints, oldest first
    expected: dict[int, dict[tuple[str, str], dict]]  # checkpoint -> (type, id) -> state as JSON shows it
    started: float


@pytest.fixture(scope="module")
def written(ray_session, tmp_path_factory) -> Written:
    """Three checkpoints of a two-shard application: a base, then two deltas."""
    url = str(tmp_path_factory.mktemp("inspect") / "cp")
    started = time.time()
    app = rayfun.start(functions(), shards=2, checkpoint_dir=url, checkpoint_interval=None, retain=5, standby=False)
    state: dict[tuple[str, str], dict] = {}
    expected: dict[int, dict] = {}

    def step(records: list[tuple], changes: dict) -> int:
        app.send_many(records)
        app.wait()
        state.update(changes)
        cid = app.checkpoint()
        expected[cid] = dict(state)
        return cid

    try:
        ids = [
            step(
                [(COUNTER, f"c{i}", i + 1) for i in range(10)] + [(PROFILE, "p0", "ann"), (PROFILE, "p1", LONG_NAME)],
                {
                    **{(COUNTER, f"c{i}"): {"count": i + 1} for i in range(10)},
                    (PROFILE, "p0"): profile_state("ann"),
                    (PROFILE, "p1"): profile_state(LONG_NAME),
                },
            ),
            step(
                [(COUNTER, f"c{i}", 100) for i in range(5)], {(COUNTER, f"c{i}"): {"count": i + 101} for i in range(5)}
            ),
            step(
                [(COUNTER, "c0", 1000), (PROFILE, "p0", "ann"), (PROFILE, "p2", "bo")],
                {
                    (COUNTER, "c0"): {"count": 1101},
                    (PROFILE, "p0"): profile_state("ann", 2),
                    (PROFILE, "p2"): profile_state("bo"),
                },
            ),
        ]
    finally:
        app.stop()
    return Written(url, ids, expected, started)


@pytest.fixture(autouse=True)
def _no_key_in_env(monkeypatch):
    monkeypatch.delenv("RAYFUN_CHECKPOINT_KEY", raising=False)


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def listing(capsys, url: str, *args: str) -> dict[int, dict]:
    code, out, err = run(capsys, "checkpoints", url, "--format", "json", *args)
    assert code == 0, err
    return {row["id"]: row for row in map(json.loads, out.splitlines())}


def state_json(capsys, url: str, *args: str) -> tuple[dict[tuple[str, str], dict], str]:
    code, out, err = run(capsys, "state", url, "--format", "json", *args)
    assert code == 0, err
    return {(r["function_type"], r["id"]): r["state"] for r in map(json.loads, out.splitlines())}, err


def copy_of(written: Written, tmp_path) -> str:
    target = tmp_path / "cp"
    shutil.copytree(written.url, target)
    return str(target)


def data_files(url: str, cid: int, kind: str = "state") -> list[pathlib.Path]:
    return sorted(pathlib.Path(url, "data", f"cp-{cid:010d}").glob(f"*.{kind}.*"))


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rayfun: error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------------------------------
# rayfun checkpoints


def test_checkpoints_lists_every_checkpoint_with_its_sizes_and_the_resume_point(written, capsys):
    first, second, third = written.ids
    rows = listing(capsys, written.url)
    assert sorted(rows) == written.ids
    store = CheckpointStore(written.url)
    for cid, row in rows.items():
        assert row["complete"] and row["valid"] and row["status"] == "valid" and row["reason"] is None
        assert row["shards"] == 2 and row["key_groups"] == store.manifest(cid).key_groups
        assert row["resume"] == (cid == third)
        manifest = pathlib.Path(written.url, "manifests", f"cp-{cid:010d}.json")
        files = [pathlib.Path(written.url, ref.path) for ref in store.manifest(cid).files()]
        assert row["size_bytes"] == manifest.stat().st_size + sum(f.stat().st_size for f in files) > 0
        when = datetime.fromisoformat(row["written_utc"].replace("Z", "+00:00")).timestamp()
        assert written.started - 1 <= when <= time.time()
    # the first is a base: it needs exactly its manifest and the files written for it
    own = [p for p in pathlib.Path(written.url, "data", f"cp-{first:010d}").iterdir()]
    assert rows[first]["size_bytes"] == sum(p.stat().st_size for p in own) + os.path.getsize(
        pathlib.Path(written.url, "manifests", f"cp-{first:010d}.json")
    )
    assert (
        rows[first]["parent_id"] is None and rows[second]["parent_id"] == first and rows[third]["parent_id"] == second
    )

    code, out, err = run(capsys, "checkpoints", written.url)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "WRITTEN", "(UTC)", "SIZE", "SHARDS", "KEY", "GROUPS", "STATUS"]
    body = {int(line.split()[0]): line for line in lines[1:4]}
    assert sorted(body) == written.ids
    assert all(human_size(rows[cid]["size_bytes"]) in line and " valid" in line for cid, line in body.items())
    assert body[third].endswith("<- resume") and "resume" not in body[first] + body[second]
    assert lines[4].startswith(f"a restart resumes from checkpoint {third}")
    assert len(lines) == 5


def test_checkpoints_through_python_dash_m(written):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAYFUN_CHECKPOINT_KEY", None)
    done = subprocess.run(
        [sys.executable, "-m", "rayfun", "checkpoints", written.url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"a restart resumes from checkpoint {written.ids[-1]}" in done.stdout
    assert [int(line.split()[0]) for line in done.stdout.splitlines()[1:4]] == written.ids


def test_a_damaged_manifest_is_shown_and_the_resume_point_moves_back(written, capsys, tmp_path):
    url = copy_of(written, tmp_path)
    first, second, third = written.ids
    manifest = pathlib.Path(url, "manifests", f"cp-{third:010d}.json")
    manifest.write_text(manifest.read_text().replace('"key_groups": ', '"key_groups": 1', 1))
    rows = listing(capsys, url)
    assert rows[third]["complete"] and not rows[third]["valid"] and rows[third]["status"] == "damaged"
    assert f"manifests/cp-{third:010d}.json" in rows[third]["reason"] and "unreadable" in rows[third]["reason"]
    assert [cid for cid, r in rows.items() if r["resume"]] == [second]
    # state reads the newest valid one, saying on stderr which it skipped and why
    found, err = state_json(capsys, url)
    assert found == written.expected[second]
    assert f"checkpoint {third} is damaged" in err and f"cp-{third:010d}.json" in err


def test_a_truncated_data_file_is_found_by_size(written, capsys, tmp_path):
    url = copy_of(written, tmp_path)
    first, second, third = written.ids
    victim = data_files(url, third)[0]
    victim.write_bytes(victim.read_bytes()[:-10])
    rows = listing(capsys, url)
    assert rows[third]["status"] == "damaged" and rows[third]["complete"]
    assert rows[third]["reason"].startswith(f"size mismatch: data/cp-{third:010d}/{victim.name}")
    assert [cid for cid, r in rows.items() if r["resume"]] == [second]
    code, out, err = run(capsys, "checkpoints", url)
    assert f"damaged: size mismatch: data/cp-{third:010d}/{victim.name}" in out
    assert f"a restart resumes from checkpoint {second}" in out


def test_a_flipped_byte_is_found_with_full_and_state_falls_back(written, capsys, tmp_path):
    url = copy_of(written, tmp_path)
    first, second, third = written.ids
    victim = data_files(url, third)[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert listing(capsys, url)[third]["valid"]  # same size: a listing cannot tell
    rows = listing(capsys, url, "--full")
    assert rows[third]["reason"].startswith(f"checksum mismatch: data/cp-{third:010d}/{victim.name}")
    assert [cid for cid, r in rows.items() if r["resume"]] == [second]
    found, err = state_json(capsys, url)
    assert found == written.expected[second] and "checksum mismatch" in err
    code, out, err = run(capsys, "state", url, "--checkpoint", str(third))
    assert code == 1 and out == ""
    assert f"checkpoint {third} is damaged: checksum mismatch: data/cp-{third:010d}/{victim.name}" in one_error_line(
        err
    )


def test_quarantined_and_incomplete_checkpoints(written, capsys, tmp_path):
    url = copy_of(written, tmp_path)
    first, second, third = written.ids
    CheckpointStore(url).quarantine(third, "checksum mismatch (found by a restart)")
    stray = pathlib.Path(url, "data", f"cp-{third + 1:010d}", "shard-0001-abcdef12.state.parquet")
    stray.parent.mkdir()
    stray.write_bytes(b"x" * 123)
    rows = listing(capsys, url)
    assert sorted(rows) == [*written.ids, third + 1]
    assert rows[third]["status"] == "quarantined" and not rows[third]["complete"] and not rows[third]["valid"]
    assert rows[third]["reason"] == "checksum mismatch (found by a restart)" and rows[third]["shards"] == 2
    assert rows[third + 1]["status"] == "incomplete" and not rows[third + 1]["complete"]
    assert rows[third + 1]["size_bytes"] == 123 and rows[third + 1]["shards"] == 1
    assert [cid for cid, r in rows.items() if r["resume"]] == [second]


def test_a_missing_or_empty_directory_is_one_line(capsys, tmp_path):
    for command in ("checkpoints", "state"):
        code, out, err = run(capsys, command, str(tmp_path / "nothing"))
        assert code == 1 and out == ""
        assert one_error_line(err) == f"rayfun: error: {tmp_path / 'nothing'}: no such directory"
        code, out, err = run(capsys, command, str(tmp_path))
        assert code == 1 and one_error_line(err) == f"rayfun: error: no checkpoints in {tmp_path}"


# ------------------------------------------------------------------------------------------------------------
# rayfun state


def test_state_json_lines_hold_the_state_sent(written, capsys):
    first, second, third = written.ids
    found, err = state_json(capsys, written.url)
    assert err == ""
    assert found == written.expected[third]
    assert found[(COUNTER, "c0")] == {"count": 1101} and found[(PROFILE, "p0")]["visits"] == 2
    assert state_json(capsys, written.url, "--checkpoint", str(first))[0] == written.expected[first]
    code, out, err = run(capsys, "state", written.url, "--checkpoint", "999")
    assert code == 1 and "checkpoint 999 does not exist" in one_error_line(err) and "Error:" not in err


def test_state_filters(written, capsys):
    expected = written.expected[written.ids[-1]]
    counters, _ = state_json(capsys, written.url, "--type", COUNTER)
    assert counters == {k: v for k, v in expected.items() if k[0] == COUNTER}
    assert state_json(capsys, written.url, "--id", "c3", "--id", "p2")[0] == {
        k: expected[k] for k in ((COUNTER, "c3"), (PROFILE, "p2"))
    }
    assert state_json(capsys, written.url, "--type", PROFILE, "--id", "c3", "--id", "p2")[0] == {
        (PROFILE, "p2"): expected[(PROFILE, "p2")]
    }
    code, out, err = run(capsys, "state", written.url, "--type", "no/such")
    assert code == 1 and out == ""
    line = one_error_line(err)
    assert "nothing matched --type no/such" in line and COUNTER in line and PROFILE in line
    code, out, err = run(capsys, "state", written.url, "--type", COUNTER, "--id", "p0")
    assert code == 1 and "nothing matched --type inspect/counter and --id p0" in one_error_line(err)


def test_state_table(written, capsys):
    third = written.ids[-1]
    code, out, err = run(capsys, "state", written.url)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith(f"checkpoint {third} (written ") and lines[0].endswith(
        "13 instances of 2 function types"
    )
    blocks = "\n".join(lines[2:]).split("\n\n")
    counter_lines, profile_lines = (b.splitlines() for b in blocks)
    assert counter_lines[0].split() == ["TYPE", "ID", "count"]
    assert [line.split() for line in counter_lines[1:3]] == [[COUNTER, "c0", "1101"], [COUNTER, "c1", "102"]]
    assert len(counter_lines) == 11
    assert profile_lines[0].split() == ["TYPE", "ID", "name", "visits", "doc", "tag"]
    p0 = profile_lines[1].split()
    assert p0 == [PROFILE, "p0", "ann", "2", '{"name":"ann","tags":["a","b"]}', "0x00ff616e"]
    cut = "x" * (CELL_WIDTH - 1) + "…"
    assert profile_lines[2].split()[:3] == [PROFILE, "p1", cut]
    widths = {len(line) for line in counter_lines[1:]}
    assert len(widths) == 1  # aligned


def test_state_parquet(written, capsys, tmp_path, monkeypatch):
    third = written.ids[-1]
    expected = written.expected[third]
    target = tmp_path / "state.parquet"
    code, out, err = run(capsys, "state", written.url, "--format", "parquet", "--output", str(target))
    assert code == 0 and out == "" and f"wrote 13 instances of checkpoint {third}" in err
    table = pq.read_table(target)
    assert table.column_names == ["function_type", "id", "count", "name", "visits", "doc", "tag"]
    assert str(table.schema.field("count").type) == "int64" and str(table.schema.field("tag").type) == "binary"
    assert table.schema.metadata[b"rayfun.checkpoint_id"] == str(third).encode()
    rows = {(r["function_type"], r["id"]): r for r in table.to_pylist()}
    assert set(rows) == set(expected)
    assert all(rows[k]["count"] == v["count"] for k, v in expected.items() if k[0] == COUNTER)
    p1 = rows[(PROFILE, "p1")]
    assert p1["name"] == LONG_NAME and p1["visits"] == 1 and p1["count"] is None
    assert json.loads(p1["doc"]) == {"name": "xxxxx", "tags": ["a", "b"]} and p1["tag"] == b"\x00\xffxx"
    only = tmp_path / "only.parquet"
    assert run(capsys, "state", written.url, "--format", "parquet", "-o", str(only), "--id", "c4")[0] == 0
    assert pq.read_table(only).to_pylist() == [{"function_type": COUNTER, "id": "c4", "count": 105}]

    code, out, err = run(capsys, "state", written.url, "--format", "parquet")
    assert code == 2 and "--output" in err
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, err = run(capsys, "state", written.url, "--format", "parquet", "--output", "-")
    assert code == 2 and out == "" and "terminal" in err


# ------------------------------------------------------------------------------------------------------------
# storage options, S3, keys


def test_storage_options_parse():
    assert parse_storage_options(
        ["endpoint_url=http://127.0.0.1:9000", "anon=false", "client_kwargs.region_name=eu-west-1", "n=3", "key=abc"]
    ) == {
        "endpoint_url": "http://127.0.0.1:9000",
        "anon": False,
        "client_kwargs": {"region_name": "eu-west-1"},
        "n": 3,
        "key": "abc",
    }


def test_a_bad_storage_option_is_a_usage_error(capsys, tmp_path):
    code, out, err = run(capsys, "checkpoints", str(tmp_path), "--storage-option", "novalue")
    assert code == 2 and "KEY=VALUE" in err


@pytest.mark.slow
def test_checkpoints_and_state_on_s3(written, capsys, moto_s3):
    import s3fs

    prefix = f"rayfun-test/inspect-{os.getpid()}-{time.time_ns()}"
    s3fs.S3FileSystem(**moto_s3).put(written.url + "/", prefix, recursive=True)
    url = f"s3://{prefix}"
    options = [
        "--storage-option=key=testing",
        "--storage-option=secret=testing",
        f"--storage-option=endpoint_url={moto_s3['client_kwargs']['endpoint_url']}",
        "--storage-option=client_kwargs.region_name=eu-west-1",
        "--storage-option=use_listings_cache=false",
    ]
    local = listing(capsys, written.url)
    remote = listing(capsys, url, *options)
    for row in (*local.values(), *remote.values()):
        row.pop("written_utc")
    assert remote == local
    assert state_json(capsys, url, *options)[0] == written.expected[written.ids[-1]]
    code, out, err = run(capsys, "checkpoints", f"s3://{prefix}-absent", *options)
    assert code == 1 and "no such directory" in one_error_line(err)


def test_signed_checkpoints_need_the_key(capsys, tmp_path):
    url, key = str(tmp_path / "cp"), b"the operators' secret, 32 bytes."
    store = CheckpointStore(url, key=key)
    layout = StateLayout.of(COUNTER, [("count", IntType.typename)])
    store.commit(1, [store.write_shard_part(1, 0, (0, 8), key_groups=8, state=[StateDelta(layout, {"a": [7]})])])
    key_file = tmp_path / "key"
    key_file.write_bytes(key + b"\n")

    row = listing(capsys, url)[1]
    assert row["status"] == "refused" and "--key-file" in row["reason"] and not row["resume"]
    code, out, err = run(capsys, "state", url)
    assert code == 1 and "signed with a checkpoint key: pass --key-file" in one_error_line(err)
    code, out, err = run(capsys, "checkpoints", url)
    assert code == 0 and out.splitlines()[-1].startswith("no checkpoint could be checked without its key")
    assert listing(capsys, url, "--key-file", str(key_file))[1]["valid"]
    assert state_json(capsys, url, "--key-file", str(key_file))[0] == {(COUNTER, "a"): {"count": 7}}
    key_file.write_bytes(b"short")
    code, out, err = run(capsys, "state", url, "--key-file", str(key_file))
    assert code == 1 and "at least 16 bytes" in one_error_line(err)
