"""The twistd plugins' ServiceMaker: a daemon started without the server extra
says in one line what to install, instead of an ImportError traceback.

``pip install pigeonpush`` brings only what the SDK and the client commands
need; the daemons' dependencies come with ``pip install 'pigeonpush[server]'``.
This module imports nothing beyond Twisted: Twisted's plugin scan imports it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from twisted.application.service import ServiceMaker

#: The top-level modules of setup.cfg's ``server`` extra (keep them in step).
SERVER_DEPENDENCIES = frozenset({"txredisapi", "hiredis", "kazoo", "prometheus_client", "autobahn"})

INSTALL_HINT = "pip install 'pigeonpush[server]'"


def import_tap(module: str, tapname: str) -> ModuleType:
    """Import a daemon's tap module; a missing server dependency exits with one line."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] not in SERVER_DEPENDENCIES:
            raise
        raise SystemExit(
            f"{tapname} needs the server extra ({error.name} is missing): {INSTALL_HINT}"
        ) from error


class DaemonMaker(ServiceMaker):
    """A ``ServiceMaker`` whose tap module is imported through :func:`import_tap`."""

    @property
    def options(self) -> Any:
        return import_tap(self.module, self.tapname).Options

    @property
    def makeService(self) -> Any:
        return import_tap(self.module, self.tapname).makeService
