"""How shards get the user's code: a package the driver imports but the Ray workers do not find is reported
as a ``UserCodeError`` naming the module and the fix, and ``runtime_env`` (py_modules, working_dir) fixes it."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

import rayfun
from rayfun.usercode import UserCode, UserCodeError, user_code_error

pytestmark = pytest.mark.timeout(240)

LIBRARY = """
from rayfun import IntType, StatefulFunctions, StringType, ValueSpec, egress_message_builder

functions = StatefulFunctions()


@functions.bind("drv/counter", specs=[ValueSpec("n", IntType)])
def counter(context, message):
    context.storage.n = (context.storage.n or 0) + message.as_int()
    context.send_egress(egress_message_builder("drv/out", f"{context.address.id}={context.storage.n}", StringType))
"""


@pytest.fixture
def driver_only(tmp_path, monkeypatch):
    """A package importable by this driver only (its directory is on the driver's sys.path, which Ray's
    workers never see); yields (package name, its directory, the directory holding it)."""
    name = f"driver_only_{uuid.uuid4().hex[:8]}"
    package = tmp_path / "code" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(LIBRARY)
    monkeypatch.syspath_prepend(str(package.parent))
    yield name, package, package.parent
    sys.modules.pop(name, None)


def test_a_module_the_workers_lack_is_named_with_the_fix(ray_session, driver_only):
    name, package, _ = driver_only
    functions = __import__(name).functions
    with pytest.raises(UserCodeError) as caught:
        rayfun.start(functions, shards=1, standby=False)
    err = caught.value
    text = str(err)
    assert err.module == name and err.where == "the coordinator"
    assert f"the coordinator cannot import module {name!r}" in text
    assert f"ray.init(runtime_env={{'py_modules': [{str(package)!r}]}})" in text  # the driver's path to ship
    assert "install the package on every node" in text and "\n" not in text
    assert isinstance(err, rayfun.RayfunError)


DRIVER = """
import json, sys
import ray
sys.path.insert(0, {holder!r})  # this driver imports the package; the job's runtime_env ships it
from rayfun.ray_auth import keep_token_auth
keep_token_auth()
ray.init(address={address!r}, runtime_env={env!r}, log_to_driver=False)
import rayfun
app = rayfun.start(__import__({name!r}).functions, shards=2, standby=False)
app.send_many([("drv/counter", "x", 2), ("drv/counter", "y", 5), ("drv/counter", "x", 3)])
print(json.dumps(sorted(app.egress("drv/out"))))
app.stop()
"""


@pytest.mark.parametrize("how", ["py_modules", "working_dir"])
def test_the_jobs_runtime_env_ships_the_code(ray_session, driver_only, how):
    """A second driver on the same cluster, with the package in its job's runtime_env (Ray uploads local
    directories only at the job level: ray.init or ``ray job submit``)."""
    name, package, holder = driver_only
    env = {"py_modules": [str(package)]} if how == "py_modules" else {"working_dir": str(holder)}
    address = ray_session.get_runtime_context().gcs_address
    code = DRIVER.format(holder=str(holder), address=address, env=env, name=name)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["x=2", "x=5", "y=5"]


def test_a_shard_that_cannot_load_the_code_says_so_on_its_first_call(ray_session, driver_only, monkeypatch):
    from rayfun.runtime.shard import ShardConfig
    from rayfun.runtime.shard_actor import ShardActor

    name, package, _ = driver_only
    functions = __import__(name).functions
    code = UserCode.pack(types_config(functions))
    sys.modules.pop(name)  # now this process is a worker that lacks it
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(package.parent)])
    shard = ShardActor(3, ShardConfig(functions=rayfun.StatefulFunctions(), shards=4, key_groups=8), code=code)
    with pytest.raises(UserCodeError, match=f"shard 3 of 'rayfun' cannot import module '{name}'"):
        shard.ready()
    with pytest.raises(UserCodeError):
        shard.status()
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = UserCodeError("inner", name, "shard 3")
    assert user_code_error(wrapped).module == name and user_code_error(RuntimeError("x")) is None


def types_config(functions):
    from rayfun.runtime.coordinator.config import AppConfig

    return AppConfig(functions=functions)
