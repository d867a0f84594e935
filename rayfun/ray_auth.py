"""Ray's token authentication stays on for every Ray that rayfun starts.

Ray 2.5x-2.6x leave it off unless ``RAY_AUTH_MODE=token`` is set, and they read that setting once, when
``ray`` is imported. rayfun sets it (unless the user chose otherwise) when it is imported, and again
before it starts a local Ray, where it also makes an already imported Ray read its settings again:
otherwise the Ray processes it starts would require a token that the driver itself does not send (the
failure: ``InvalidAuthToken ... RAY_AUTH_MODE is currently 'disabled'``). ``ray.init`` then makes a token
in ``~/.ray/auth_token``, which other drivers and ``ray job submit`` of the same user find there.
"""

from __future__ import annotations

import os
import sys

__all__ = ["keep_token_auth"]


def keep_token_auth() -> None:
    """Turn Ray's token authentication on unless ``RAY_AUTH_MODE`` says otherwise, also for an imported Ray
    (but never under a Ray already running in this process: that one keeps what it was started with)."""
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ["RAY_AUTH_MODE"] != "token" or "ray._raylet" not in sys.modules:
        return  # the user's explicit choice, or Ray not imported yet: it will read the setting itself
    try:
        # ray/_raylet.pyi declares only part of the compiled module: these three exist but are not in it
        from ray._raylet import AuthenticationMode, Config, get_authentication_mode  # type: ignore[attr-defined]
    except ImportError:  # a Ray without token authentication, or none imported yet that matters
        return
    if get_authentication_mode() != AuthenticationMode.TOKEN:
        Config.initialize("")  # Ray read RAY_AUTH_MODE when it was imported, before it was set
