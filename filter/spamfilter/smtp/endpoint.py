"""Where the filter listens and where it relays: ``host:port`` or ``unix:/path/to.sock``.

A Unix socket keeps the filter off the network altogether (spampd and amavis users run
it so): who may connect is decided by the socket file's permissions (the daemon's umask
and its directory), not by ``allowed_networks``, which applies to TCP clients only.
asyncio removes a stale socket file left by a killed daemon when it binds the path; the
daemon removes its own socket file when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

UNIX_PREFIX = "unix:"


def parse_hostport(value: str) -> tuple[str, int]:
    """``'127.0.0.1:10025'`` or ``'[::1]:10025'`` -> (host, port); ValueError if malformed."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected host:port, not {value!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Endpoint:
    """A TCP address (``host``, ``port``) or, when ``path`` is set, a Unix socket."""

    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, value: str) -> Endpoint:
        if value.startswith(UNIX_PREFIX):
            path = value[len(UNIX_PREFIX) :]
            if not path.startswith("/"):
                raise ValueError(f"expected unix:/absolute/path, not {value!r}")
            return cls(path=path)
        try:
            host, port = parse_hostport(value)
        except ValueError:
            raise ValueError(f"expected host:port or unix:/path, not {value!r}") from None
        return cls(host=host, port=port)

    def __str__(self) -> str:
        return f"{UNIX_PREFIX}{self.path}" if self.path else f"{self.host}:{self.port}"

    async def serve(self, protocol: Callable[[], asyncio.Protocol]) -> asyncio.Server:
        """Listen here; the server's sockets are bound when this returns."""
        loop = asyncio.get_running_loop()
        if self.path:
            return await loop.create_unix_server(protocol, self.path)
        return await loop.create_server(protocol, self.host, self.port)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.path:
            return await asyncio.open_unix_connection(self.path)
        return await asyncio.open_connection(self.host, self.port)

    def bound(self, server: asyncio.Server) -> Endpoint:
        """This endpoint as ``server`` bound it (the port the OS chose for port 0)."""
        if self.path:
            return self
        host, port = server.sockets[0].getsockname()[:2]
        return Endpoint(host=host, port=port)

    def remove_socket_file(self) -> None:
        """After the server closed: its socket file, which asyncio leaves behind."""
        if self.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
