"""STARTTLS and SMTP AUTH, for a filter reached over a network rather than loopback.

The gate (``Gate`` below) comes first: a client outside ``allowed_networks`` is refused
with 554 before any command, whatever it could prove later. On top of that:

- ``tls_cert`` + ``tls_key`` (PEM) offer STARTTLS; ``require_starttls`` refuses every
  command but EHLO, NOOP, QUIT and STARTTLS before it (aiosmtpd's 530), so an attacker
  who strips STARTTLS from the EHLO reply (a downgrade) gets no mail through.
- ``auth_file`` enables AUTH PLAIN and LOGIN, only after STARTTLS (aiosmtpd refuses it
  in clear with 538), and ``auth_required`` refuses MAIL before a successful AUTH (530).
  The file holds one ``user:scrypt$n$r$p$salt$hash`` line per user; make one with
  ``python -m spamfilter.smtp.access USER`` (the password is read from stdin).

Passwords are never logged, nor stored in clear; a failed login is logged with the
client's address only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from spamfilter.smtp.prometheus import FilterMetrics

if TYPE_CHECKING:
    from spamfilter.smtp.protocol import FilterSMTP

log = logging.getLogger(__name__)

# scrypt cost: 16 MiB and ~50 ms per check; successful logins are remembered (see below).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Gate:
    """Admits connections from allowed networks up to a limit; knows the live ones."""

    def __init__(
        self, networks: Sequence[str], max_connections: int, metrics: FilterMetrics
    ) -> None:
        self.metrics = metrics
        self.live: set[FilterSMTP] = set()
        self.configure(networks, max_connections)

    def configure(self, networks: Sequence[str], max_connections: int) -> None:
        """Set the allowed networks and the limit (at start and on SIGHUP)."""
        self.networks: list[Network] = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.max_connections = max_connections

    def refusal(self, peer: object) -> str | None:
        """The reply that refuses ``peer`` (a socket address), or None to admit it.

        A Unix-socket client (its address is a str, often empty) is admitted: the socket
        file's permissions decide who can connect (``endpoint.py``).
        """
        if isinstance(peer, str):
            return self._limit_reached()
        host = peer[0] if isinstance(peer, tuple) else None
        try:
            address = ipaddress.ip_address(str(host).split("%")[0])
        except ValueError:
            address = None
        if address is None or not any(address in network for network in self.networks):
            self.metrics.refused_connections.labels("network").inc()
            return "554 5.7.1 Your address is not allowed to use this filter"
        return self._limit_reached()

    def _limit_reached(self) -> str | None:
        if len(self.live) >= self.max_connections:
            self.metrics.refused_connections.labels("limit").inc()
            return "421 4.3.2 Too many connections, try again later"
        return None


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for STARTTLS; raises OSError (ssl.SSLError) on an unusable pair."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password.encode(), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    encoded = (base64.b64encode(part).decode() for part in (salt, digest))
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), *encoded])


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=2**26, dklen=32)


class PasswordFile:
    """aiosmtpd's ``authenticator``: checks LOGIN/PLAIN credentials against ``auth_file``.

    aiosmtpd calls it on the event loop, and a scrypt check takes ~50 ms there, so a
    password that verified once is remembered (as a SHA-256 with a per-process key) and
    an MTA reconnecting all day pays the scrypt cost once.
    """

    def __init__(self, path: str) -> None:
        self.users = read_password_file(path)
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: object
    ) -> AuthResult:
        if isinstance(data, LoginPassword) and self.check(data.login, data.password):
            return AuthResult(success=True, auth_data=data.login.decode("utf-8", "replace"))
        log.warning("AUTH %s failed for a client at %s", mechanism, session.peer)
        return AuthResult(success=False, handled=False)

    def check(self, login: bytes, password: bytes) -> bool:
        user = login.decode("utf-8", "replace")
        stored = self.users.get(user)
        if stored is None:
            return False
        remembered = hmac.digest(self._key, password, "sha256")
        if hmac.compare_digest(self._verified.get(user, b""), remembered):
            return True
        if not verify(password, stored):
            return False
        self._verified[user] = remembered
        return True


def verify(password: bytes, stored: str) -> bool:
    _scheme, n, r, p, salt, digest = stored.split("$")
    computed = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    return hmac.compare_digest(computed, base64.b64decode(digest))


def read_password_file(path: str) -> dict[str, str]:
    """{user: stored hash}; ValueError naming the line for anything malformed."""
    users = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, _, stored = line.strip().partition(":")
        fields = stored.split("$")
        if not user or len(fields) != 6 or fields[0] != "scrypt":
            raise ValueError(f"{path}:{number}: expected user:scrypt$n$r$p$salt$hash")
        users[user] = stored
    if not users:
        raise ValueError(f"{path}: no users")
    return users


def main() -> None:
    """``python -m spamfilter.smtp.access USER``: print an auth_file line; password on stdin."""
    if len(sys.argv) != 2 or ":" in sys.argv[1]:
        sys.exit("usage: python -m spamfilter.smtp.access USER  (password on stdin)")
    password = sys.stdin.readline().rstrip("\n")
    print(f"{sys.argv[1]}:{hash_password(password)}")


if __name__ == "__main__":
    main()
