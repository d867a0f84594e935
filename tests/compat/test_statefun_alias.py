"""``rayfun.compat.install_statefun_alias()``: a library written for the StateFun SDK (``sdk_library``,
which imports ``statefun`` itself) runs embedded in real shard actors, and the alias refuses to exist
where the official SDK is importable."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import rayfun
from rayfun import compat

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def alias():
    """The alias in this process for one test, then gone again (with the library it let us import)."""
    compat.install_statefun_alias()
    yield
    compat._uninstall_statefun_alias()
    for name in [m for m in sys.modules if m.startswith("tests.compat.sdk_library")]:
        del sys.modules[name]


def test_statefun_names_resolve_to_rayfun(alias):
    import statefun
    import statefun.core
    import statefun.request_reply_pb2 as pb
    from statefun import IntType, StatefulFunctions, ValueSpec, message_builder

    from rayfun.remote import protocol

    assert StatefulFunctions is rayfun.StatefulFunctions and ValueSpec is rayfun.ValueSpec
    assert IntType is rayfun.IntType and message_builder is rayfun.message_builder
    assert statefun.core.SdkAddress is rayfun.Address and pb.ToFunction is protocol.ToFunction
    assert compat.alias_installed()
    compat.install_statefun_alias()  # idempotent
    with pytest.raises(ModuleNotFoundError, match="statefun.request_reply_v3"):
        import statefun.no_such_module
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        statefun.Nope


def test_an_sdk_library_runs_embedded_in_the_shards(ray_session, alias):
    from tests.compat.sdk_library import functions

    app = rayfun.start(functions, shards=2, standby=False)
    try:
        app.send_many([("lib/counter", "a", 1), ("lib/counter", "b", 10), ("lib/counter", "a", 2)])
        reports = app.egress("lib/reports")
        assert sorted(reports) == [
            "a=1 #1 from lib/counter as io.statefun.types/int",
            "a=3 #2 from lib/counter as io.statefun.types/int",
            "b=10 #1 from lib/counter as io.statefun.types/int",
        ]
        assert app.state("lib/counter", "a") == {"count": 3}
        assert app.state("lib/reporter", "b") == {"reports": 1}
    finally:
        app.stop()


def _run(code: str, pythonpath: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env)


REFUSE = """
    from rayfun import compat
    try:
        compat.install_statefun_alias()
    except compat.AliasRefused as exc:
        print("REFUSED", exc)
    import statefun
    print("REAL", statefun.__file__, compat.alias_installed())
"""


def test_refused_where_the_real_sdk_is_importable(tmp_path):
    fake = tmp_path / "statefun"  # stands in for apache-flink-statefun installed in this environment
    fake.mkdir()
    (fake / "__init__.py").write_text("SDK = True\n")
    done = _run(REFUSE, [str(tmp_path), *sys.path])
    assert done.returncode == 0, done.stderr
    refused, real = done.stdout.strip().splitlines()
    assert refused.startswith("REFUSED the StateFun SDK is importable here") and str(fake) in refused
    assert "never shadows it" in refused
    assert real == f"REAL {fake / '__init__.py'} False"  # the real one is what `import statefun` gets


def test_refused_when_another_statefun_is_already_imported():
    done = _run(
        """
        import sys, types
        sys.modules["statefun"] = types.ModuleType("statefun")
        from rayfun import compat
        try:
            compat.install_statefun_alias()
        except ImportError as exc:  # AliasRefused is an ImportError (and a RayfunError)
            print(type(exc).__name__, exc)
        """,
        sys.path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("AliasRefused a module named 'statefun' is already imported")


def test_a_worker_where_the_real_sdk_is_importable_refuses_too(tmp_path):
    """The driver had the alias; a worker that has the official SDK installed says so and loads nothing."""
    fake = tmp_path / "statefun"
    fake.mkdir()
    (fake / "__init__.py").write_text("SDK = True\n")
    done = _run(
        """
        from rayfun.usercode import UserCode, UserCodeError
        try:
            UserCode(b"never unpickled", statefun_alias=True).load("shard 1 of 'app'")
        except UserCodeError as exc:
            print(exc.module, exc)
        """,
        [str(tmp_path), *sys.path],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("statefun shard 1 of 'app': the StateFun SDK is importable here")
