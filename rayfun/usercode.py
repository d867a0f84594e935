"""How the application's own code (its functions, sources and sinks) reaches the Ray workers.

The driver pickles the application's configuration once (``UserCode.pack``). Ray's pickling stores a
function or class of an importable module as a reference (module and name), so each worker imports that
module again: a package the driver can import but a worker cannot (a directory on the driver's
``sys.path`` only, a package installed on the driver's machine only) fails there. Ray would report that
as a deserialization error of an actor argument, deep in its own frames. So the configuration travels as
bytes and the coordinator and every shard load it themselves (``UserCode.load``), which turns the failure
into a ``UserCodeError`` naming the module, the actor and the fix (the job's ``runtime_env``), and installs the
StateFun alias first when the driver had installed it (``rayfun.compat``), before any user module is
imported.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from .errors import RayfunError

__all__ = ["UserCode", "UserCodeError", "user_code_error"]

# Ray ships local directories only with a job (ray.init or `ray job submit`), not per actor
_FIX = (
    "ship it with the job: ray.init(runtime_env={{'py_modules': [{path}]}}) (or {{'working_dir': {dir}}}; "
    "rayfun.start(..., ray_init={{'runtime_env': ...}}) when rayfun starts Ray; `ray job submit "
    "--working-dir`), or install the package on every node"
)
_FIX_FILE = (
    "ship it with the job: ray.init(runtime_env={{'working_dir': {dir}}}) (rayfun.start(..., "
    "ray_init={{'runtime_env': ...}}) when rayfun starts Ray; `ray job submit --working-dir`), or install "
    "it on every node"
)


class UserCodeError(RayfunError):
    """A Ray worker of the application cannot load the application's code (a module missing there, or a
    different version of it). ``module`` names the module, ``where`` the actor."""

    def __init__(self, message: str, module: str | None = None, where: str = "") -> None:
        super().__init__(message)
        self.module = module
        self.where = where

    def __reduce__(self):  # keep the fields across Ray's pickling of exceptions
        return (type(self), (str(self), self.module, self.where))


class UserCode:
    """The application's configuration, pickled by the driver, loaded by each actor (see module doc)."""

    __slots__ = ("blob", "statefun_alias")

    def __init__(self, blob: bytes, statefun_alias: bool = False) -> None:
        self.blob = blob
        self.statefun_alias = statefun_alias  # the driver had installed rayfun.compat's alias

    def __getstate__(self) -> tuple[bytes, bool]:
        return self.blob, self.statefun_alias

    def __setstate__(self, state: tuple[bytes, bool]) -> None:
        self.blob, self.statefun_alias = state

    @classmethod
    def pack(cls, value: Any, statefun_alias: bool | None = None) -> UserCode:
        """Pickle ``value`` here; ``statefun_alias``: whether loaders install the alias first (default:
        whether this process has it)."""
        from ray import cloudpickle

        from .compat import alias_installed

        try:
            blob = cloudpickle.dumps(value)
        except Exception as exc:
            raise TypeError(f"the application's functions, sources or sinks cannot be pickled: {exc}") from exc
        return cls(blob, alias_installed() if statefun_alias is None else statefun_alias)

    def load(self, where: str) -> Any:
        """Unpickle in this worker; ``UserCodeError`` names what could not be imported and how to fix it."""
        from ray import cloudpickle

        if self.statefun_alias:
            from .compat import AliasRefused, install_statefun_alias

            try:
                install_statefun_alias()  # before the user's modules import statefun
            except AliasRefused as exc:  # the real SDK is installed here, not in the driver
                raise UserCodeError(f"{where}: {exc}", module="statefun", where=where) from None
        try:
            return cloudpickle.loads(self.blob)
        except ModuleNotFoundError as exc:
            module = exc.name or str(exc)
            raise UserCodeError(
                f"{where} cannot import module {module!r}, which the application's code needs "
                f"(the driver imported it; this Ray worker does not find it: {exc}); "
                + _FIX.format(path="'<the package directory>'", dir="'<the directory holding it>'"),
                module=module,
                where=where,
            ) from None
        except (ImportError, AttributeError) as exc:  # the module is there, but not the version the driver has
            raise UserCodeError(
                f"{where} cannot load the application's code: {type(exc).__name__}: {exc} (a module in this "
                "Ray worker differs from the driver's); " + _FIX.format(path="...", dir="..."),
                where=where,
            ) from None


def user_code_error(exc: BaseException | None, driver: bool = False) -> UserCodeError | None:
    """The plain ``UserCodeError`` inside a Ray error (an actor's, or a nested one's), or None. In the
    ``driver``, with its view of the module added: where it imports it from, so which path to ship."""
    from ray.exceptions import RayError

    for _ in range(8):  # Ray's dual RayTaskError(UserCodeError) is one too: take its cause, the plain one
        if exc is None or (isinstance(exc, UserCodeError) and not isinstance(exc, RayError)):
            break
        cause = getattr(exc, "cause", None)  # a RayTaskError holds the actor's exception
        exc = cause if isinstance(cause, BaseException) else exc.__cause__
    if not isinstance(exc, UserCodeError):
        return None
    message, module = str(exc), exc.module
    if module and driver:
        top = module.partition(".")[0]
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            if spec.submodule_search_locations:  # a package: py_modules takes its directory
                path = os.path.dirname(spec.origin)
                fix = _FIX.format(path=repr(path), dir=repr(os.path.dirname(path)))
            else:  # a single-file module: ship the directory that holds it
                fix = _FIX_FILE.format(dir=repr(os.path.dirname(spec.origin)))
            message = (
                f"{message.split('; ship it with the job')[0]}; {fix} (the driver imports {top!r} from {spec.origin})"
            )
    return UserCodeError(message, module, exc.where)
