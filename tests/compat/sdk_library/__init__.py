"""A small library written against the StateFun Python SDK: it imports ``statefun`` itself, as such
libraries do. Imported only after ``rayfun.compat.install_statefun_alias()``; rayfun embeds it unchanged."""

from .counting import functions

__all__ = ["functions"]
