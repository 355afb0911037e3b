"""A private Postfix instance for tests and benchmarks: its own config, queue and Maildir.

Everything lives under one temporary directory (made traversable, because Postfix's
daemons and the Maildir owner are not root); the system's /etc/postfix and
/var/spool/postfix are never touched. Loopback ports only, no DNS. The filter's
master.cf lines come from ``spamfilter.smtp.postfix``, the same lines README.md quotes.

``postfix -c DIR start`` needs root (the master daemon binds ports and switches users).
An instance whose filter is a pool of daemons (``FilterPool``) gets an /etc/hosts of its
own, in a private mount namespace (``unshare``), so the pool's name resolves to the
daemons' loopback addresses for this instance alone.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from spamfilter.smtp.postfix import (
    FilterPool,
    Hops,
    Mode,
    format_main_cf,
    mailbox_main_cf,
    main_cf,
    master_cf,
)
from spamrig import LOCALHOST, ROOT

DOMAIN = "example.net"
USER = "user"
POOL_NAME = "spamfilters.test"  # the filter pool's host name, in the instance's /etc/hosts
TIMEOUT = 30.0  # seconds any Postfix command or delivery may take
SBIN = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"

# The stock daemons, shared with the compose set-up: docker/postfix/master.cf up to the
# filter's lines, which ``master_cf`` supplies here for the test's ports.
SHIPPED_MASTER_CF = ROOT / "docker" / "postfix" / "master.cf"
FILTER_MARKER = "# --- the filter"


def postfix_binary() -> str | None:
    return shutil.which("postfix", path=SBIN)


def free_port(*addresses: str) -> int:
    """A port nothing listens on now at any of ``addresses`` (default: 127.0.0.1).

    The OS picks it on the first address, so parallel runs differ; a pick taken on
    another address is dropped and the OS asked again.
    """
    first, *others = addresses or (LOCALHOST,)
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind((first, 0))
            port = probe.getsockname()[1]
            if all(_bindable(address, port) for address in others):
                return port
    raise AssertionError(f"no port free on all of {addresses}")


def _bindable(address: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
        return True


@dataclass
class Postfix:
    """A running private instance: ``smtp_port`` in, mail out in ``maildir``."""

    root: Path
    smtp_port: int
    filter_port: int
    reinject_port: int
    pool: FilterPool | None = None  # several filter daemons, at pool.listen

    @property
    def config_dir(self) -> Path:
        return self.root / "conf"

    @property
    def maildir(self) -> Path:
        return self.root / "mail" / USER / "Maildir"

    def run(self, *args: str) -> str:
        """Run a Postfix command (``postqueue -p`` ...) on this instance; its stdout."""
        done = subprocess.run(
            [shutil.which(args[0], path=SBIN) or args[0], "-c", str(self.config_dir), *args[1:]],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        if done.returncode:
            raise AssertionError(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def delivered(self) -> list[bytes]:
        """The messages in the Maildir, oldest first."""
        new = self.maildir / "new"
        files = sorted(new.iterdir(), key=lambda path: path.stat().st_mtime) if new.is_dir() else []
        return [path.read_bytes() for path in files]

    def wait_delivered(self, count: int, timeout: float = TIMEOUT) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(messages := self.delivered()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(messages)} of {count} messages delivered; queue:\n"
                    f"{self.run('postqueue', '-p')}\nlog:\n{self.log()[-4000:]}"
                )
            time.sleep(0.1)
        return messages

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""


def instance_main_cf(root: Path, mode: Mode, hops: Hops) -> dict[str, str]:
    nobody = pwd.getpwnam("nobody")
    return {
        "compatibility_level": "3.6",
        "queue_directory": str(root / "queue"),
        "data_directory": str(root / "data"),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "inet_interfaces": "loopback-only",
        "inet_protocols": "ipv4",
        "myhostname": "mx.test",
        "mydomain": "test",
        "mydestination": "",
        "mynetworks": hops.filter_network,
        "relayhost": "",
        "smtp_dns_support_level": "disabled",  # no DNS anywhere
        "smtp_host_lookup": "native",
        "alias_maps": "",
        "alias_database": "",
        "local_header_rewrite_clients": "",  # add no Date/Message-ID: bodies compare exactly
        "maillog_file": str(root / "maillog"),  # no syslog in a container
        "maillog_file_prefixes": str(root),
        "smtpd_banner": "$myhostname ESMTP",
        **mailbox_main_cf(DOMAIN, [USER], str(root / "mail"), nobody.pw_uid, nobody.pw_gid),
        **main_cf(mode, hops),
    }


def write_config(root: Path, mode: Mode, hops: Hops) -> None:
    config = root / "conf"
    config.mkdir()
    (config / "main.cf").write_text(format_main_cf(instance_main_cf(root, mode, hops)))
    stock = SHIPPED_MASTER_CF.read_text().split(FILTER_MARKER)[0]
    public = f"{hops.smtp} inet n - - - - smtpd\n" if mode == "after-queue" else ""
    (config / "master.cf").write_text(stock + public + master_cf(mode, hops))


@contextmanager
def postfix_instance(mode: Mode, filter_addresses: Sequence[str] = ()) -> Iterator[Postfix]:
    """Start a private Postfix set up for ``mode``; stop it (and kill leftovers) after.

    With ``filter_addresses`` (after the queue), Postfix hands its mail to a FilterPool
    of daemons listening on those addresses, all on ``filter_port``.
    """
    root = Path(tempfile.mkdtemp(prefix="spamfilter-postfix-"))
    root.chmod(0o755)  # the daemons run as postfix, the Maildir belongs to nobody
    filter_port = free_port(*filter_addresses)
    pool = FilterPool(POOL_NAME, tuple(filter_addresses), filter_port) if filter_addresses else None
    instance = Postfix(root, free_port(), filter_port, free_port(), pool)
    smtp, reinject = f"{LOCALHOST}:{instance.smtp_port}", f"{LOCALHOST}:{instance.reinject_port}"
    if pool:
        hops = pool.hops(reinject, filter_network="127.0.0.0/8", smtp=smtp)
    else:
        hops = Hops(smtp=smtp, filter=f"{LOCALHOST}:{filter_port}", reinject=reinject)
    write_config(root, mode, hops)
    (root / "queue").mkdir(mode=0o755)  # Postfix insists that root owns it
    (root / "mail").mkdir()
    shutil.chown(root / "mail", "nobody", "nogroup")
    try:
        _start(instance)
        _wait_listening(instance.smtp_port)
        yield instance
    finally:
        subprocess.run(
            [postfix_binary() or "postfix", "-c", str(root / "conf"), "stop"],
            capture_output=True,
            timeout=TIMEOUT,
        )
        _kill_leftovers(root / "conf")
        shutil.rmtree(root, ignore_errors=True)


def _start(instance: Postfix) -> None:
    """``postfix start``; for a pool, in a mount namespace with the pool's /etc/hosts.

    The master daemon and every daemon it starts stay in that namespace; commands run
    from outside it (postqueue, postfix stop) reach them through the queue directory.
    """
    if instance.pool is None:
        instance.run("postfix", "start")
        return
    hosts = instance.root / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{instance.pool.hosts_file()}")
    hosts.chmod(0o644)
    postfix = postfix_binary() or "postfix"
    done = subprocess.run(
        [
            *("unshare", "--mount", "--propagation", "private", "--", "sh", "-c"),
            'mount --bind "$0" /etc/hosts && exec "$@"',
            *(str(hosts), postfix, "-c", str(instance.config_dir), "start"),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if done.returncode:
        raise AssertionError(
            f"postfix start in a private mount namespace failed (needs unshare and root):\n"
            f"{done.stdout}{done.stderr}"
        )


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            socket.create_connection((LOCALHOST, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _kill_leftovers(config_dir: Path) -> None:
    """SIGKILL every process of this instance (Postfix passes MAIL_CONFIG to its daemons)."""
    marker = f"MAIL_CONFIG={config_dir}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        if marker in environment:
            with suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
