"""The operating commands' failures, each one clear line (no cluster needed for these)."""

from __future__ import annotations

import pytest

from rayfun.cli import main
from rayfun.cli.operate import load_application, status_line
from tests.support.servers import free_port


def _one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("rayfun: error: "), (code, err)
    return err


def test_an_app_that_cannot_be_loaded_is_said_in_one_line(capsys, tmp_path):
    assert "no such file" in _one_line_error(capsys, ["run", str(tmp_path / "missing.yaml")])
    assert "expected a module.yaml or package.module:functions" in _one_line_error(capsys, ["run", "nothing"])
    assert "cannot import 'no_such_pkg.mod'" in _one_line_error(capsys, ["run", "no_such_pkg.mod:functions"])
    assert "not a rayfun.StatefulFunctions" in _one_line_error(capsys, ["run", "examples.greeter:main"])


def test_attaching_to_a_cluster_that_is_not_there_fails_fast(capsys):
    port = free_port()  # nothing listens there
    err = _one_line_error(capsys, ["status", "some-app", "--address", f"127.0.0.1:{port}"])
    assert f":{port}" in err and "ray start --head" in err  # Ray names the address by the machine's IP


def test_load_application_finds_embedded_functions_and_module_yaml(tmp_path):
    import rayfun

    functions, module = load_application("examples.greeter:functions")
    assert isinstance(functions, rayfun.StatefulFunctions) and module is None
    assert "example/greeter" in functions.typenames
    path = tmp_path / "module.yaml"
    path.write_text("kind: io.statefun.endpoints.v2/http\nspec: {functions: a/*, urlPathTemplate: 'http://h/'}\n")
    functions, module = load_application(str(path))
    assert module == str(path) and not list(functions.typenames)


@pytest.mark.parametrize("age, expected", [(None, "checkpoint 7"), (3.2, "checkpoint 7 (3 s ago)")])
def test_the_status_line_says_throughput_backlog_and_checkpoint(age, expected):
    info = {"name": "fraud", "state": "running", "shards": 2, "checkpoint_dir": "cp", "last_checkpoint": 7}
    info["last_checkpoint_age_s"] = age
    line = status_line(info, [{"backlog": 1200}, {"backlog": 34}], 51234.4)
    assert line == f"fraud: running, 2 shards, 51,234 msgs/s, backlog 1,234, {expected}"


class _AppThatEndsBeforeItsSavepoint:
    """What ``rayfun stop`` attaches to when the coordinator dies mid-stop: ``App.stop`` answers None."""

    def __init__(self, checkpoint_dir: str | None) -> None:
        self.checkpoint_dir, self.asked = checkpoint_dir, None

    def info(self) -> dict:
        return {"checkpoint_dir": self.checkpoint_dir}

    def stop(self, savepoint: bool = False) -> int | None:
        self.asked = savepoint
        return None


@pytest.mark.parametrize("checkpoint_dir, says", [("/cp", "without a savepoint"), (None, "app: stopped")])
def test_stop_says_when_the_savepoint_it_asked_for_was_not_taken(monkeypatch, capsys, checkpoint_dir, says):
    from rayfun.cli import operate

    app = _AppThatEndsBeforeItsSavepoint(checkpoint_dir)
    monkeypatch.setattr(operate, "_connect", lambda name, address: app)
    assert main(["stop", "app"]) == 0
    out = capsys.readouterr()
    assert app.asked is (checkpoint_dir is not None)
    assert says in out.out + out.err and "with a savepoint" not in out.out
    if checkpoint_dir:  # a savepoint was asked for: the user learns where the next run resumes
        assert "newest complete checkpoint" in out.err and not out.out
