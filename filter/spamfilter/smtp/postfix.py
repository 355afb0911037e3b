"""The Postfix settings that put the filter into Postfix's mail flow.

One source for README's snippets, ``docker/postfix/``, the integration tests and the
benchmark: ``tests/test_postfix.py`` runs a private Postfix with exactly these lines and
checks that README.md and ``docker/postfix/`` quote them unchanged.

After the queue (``content_filter``): Postfix queues the mail first; its ``smtp`` client
then hands it to the filter, which relays it to a second smtpd (re-injection) that does
not filter again. A filter that is down only defers mail, and a spam verdict can only tag
(a 550 there would bounce to a possibly forged sender).

Before the queue (``smtpd_proxy_filter``): the public smtpd proxies each SMTP session
through the filter before it queues anything, so the filter's 550 reaches the client:
spam is refused, not bounced. A filter that is down makes smtpd answer 451.

Both hand the original client to the filter with XFORWARD, and the filter passes it on,
so the re-injection smtpd logs (and writes in its Received header) the real client.

Several filter hosts (after the queue; ``FilterPool``): ``content_filter`` names one host
name with an address record per filter daemon. Postfix's smtp client shuffles a host's
addresses for each delivery (``smtp_randomize_addresses``), which spreads the mail, and
tries the next address in the same delivery when one refuses the connection, times out
or answers 4xx, which fails over with no deferral. A comma-separated list of next hops
(Postfix 3.5 and later) would only fail over: its destinations are tried in order, so
the first gets all the mail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Mode = Literal["after-queue", "before-queue"]
MODES: tuple[Mode, ...] = ("after-queue", "before-queue")


@dataclass(frozen=True)
class Hops:
    """Where each hop listens, as master.cf and ``spamfilter serve`` spell it."""

    smtp: str = "smtp"  # master.cf service of the public smtpd ("smtp": port 25)
    filter: str = "127.0.0.1:10025"  # spamfilter serve --listen
    reinject: str = "127.0.0.1:10026"  # spamfilter serve --relay: the re-injection smtpd
    filter_network: str = "127.0.0.0/8"  # where the filter connects to Postfix from
    filter_hosts: int = 1  # daemons behind the filter's host name, one address record each

    @property
    def content_filter(self) -> str:
        """``transport:[host]:port``: brackets, so Postfix looks up no MX record."""
        host, _, port = self.filter.rpartition(":")
        return f"spamfilter:[{host}]:{port}"


@dataclass(frozen=True)
class FilterPool:
    """Several filter daemons behind one host name, each on its own address, same port.

    The name needs one address record per daemon, in DNS or in Postfix's /etc/hosts (the
    filter transport looks it up with ``smtp_host_lookup=native``: nsswitch.conf's order).
    """

    name: str = "spamfilters.example.net"
    addresses: tuple[str, ...] = ("192.0.2.11", "192.0.2.12")  # documentation addresses
    port: int = 10025

    @property
    def listen(self) -> list[str]:
        """Each daemon's ``spamfilter serve --listen``."""
        return [f"{address}:{self.port}" for address in self.addresses]

    def hosts_file(self) -> str:
        """The /etc/hosts lines that give the name its addresses (where DNS does not)."""
        return "".join(f"{address}  {self.name}\n" for address in self.addresses)

    def hops(self, reinject: str, filter_network: str, smtp: str = "smtp") -> Hops:
        """The hops of a Postfix that hands its mail to this pool."""
        return Hops(
            smtp=smtp,
            filter=f"{self.name}:{self.port}",
            reinject=reinject,
            filter_network=filter_network,
            filter_hosts=len(self.addresses),
        )


# docs/postfix.md's example: Postfix on 192.0.2.10, two filter hosts on its network.
POOL_EXAMPLE = FilterPool()
POOL_EXAMPLE_HOPS = POOL_EXAMPLE.hops(reinject="192.0.2.10:10026", filter_network="192.0.2.0/24")

# docker/compose.yaml: the filter is the "filter" container, Postfix's re-injection
# smtpd listens on all its interfaces, and the network's subnet is fixed.
COMPOSE_HOPS = Hops(
    smtp="smtp", filter="filter:10025", reinject="10026", filter_network="172.28.0.0/24"
)


def main_cf(mode: Mode, hops: Hops = Hops()) -> dict[str, str]:
    """The main.cf settings for ``mode``: after the queue, all mail goes to the filter."""
    return {"content_filter": hops.content_filter} if mode == "after-queue" else {}


def format_main_cf(settings: dict[str, str]) -> str:
    """``name = value`` lines, as main.cf holds them."""
    return "".join(f"{name} = {value}\n" for name, value in settings.items())


def master_cf(mode: Mode, hops: Hops = Hops()) -> str:
    """The master.cf services for ``mode``.

    After the queue: the filter's transport and the re-injection smtpd (the public smtpd
    stays as it is). Before the queue: the public smtpd, proxied through the filter, and
    the re-injection smtpd. ``speed_adjust`` receives the whole message before it opens
    the filter's connection, so slow clients hold no filter session; the proxy timeout
    outlasts the filter's relay_timeout (120 s), which must answer first.
    """
    reinjection = _service(hops.reinject, "inet", "smtpd", _reinjection(hops, mode))
    if mode == "after-queue":
        client = _filter_client(hops.filter_hosts)
        return _join(_service("spamfilter", "unix", "smtp", client, "10"), reinjection)
    proxy = [
        f"-o smtpd_proxy_filter={hops.filter}",
        "-o smtpd_proxy_options=speed_adjust",
        "-o smtpd_proxy_timeout=150s",
    ]
    return _join(_service(hops.smtp, "inet", "smtpd", proxy, "20"), reinjection)


def _join(*services: str) -> str:
    return "\n".join(services) + "\n"


def _filter_client(filter_hosts: int) -> list[str]:
    """The smtp client that delivers queued mail to the filter (or to one of several)."""
    options = [
        "-o smtp_send_xforward_command=yes",  # the filter learns the original client
        "-o disable_mime_output_conversion=yes",  # hand over the bytes as received
        "-o smtp_generic_maps=",
    ]
    if filter_hosts > 1:
        options += [
            "-o smtp_host_lookup=native",  # the pool's name: /etc/hosts or DNS A records
            "-o smtp_randomize_addresses=yes",  # the default, relied on: spread the mail
            # One delivery may try every filter host: refused or timed-out connections
            # count against the address limit, sessions that got past EHLO (then 4xx)
            # against the session limit (defaults 5 and 2).
            f"-o smtp_mx_address_limit={filter_hosts}",
            f"-o smtp_mx_session_limit={filter_hosts}",
            "-o smtp_connect_timeout=5s",  # a host that is off costs 5 s, not 30, per try
        ]
    return options


def _reinjection(hops: Hops, mode: Mode) -> list[str]:
    """The smtpd the filter relays to: trusts the filter, filters nothing again."""
    overrides = "no_unknown_recipient_checks"
    if mode == "after-queue":  # header/body checks and milters ran on the way in
        overrides += ",no_header_body_checks,no_milters"
    return [
        "-o content_filter=",
        f"-o receive_override_options={overrides}",
        "-o smtpd_helo_restrictions=",
        "-o smtpd_client_restrictions=",
        "-o smtpd_sender_restrictions=",
        "-o smtpd_relay_restrictions=",
        "-o smtpd_recipient_restrictions=permit_mynetworks,reject",
        f"-o mynetworks={hops.filter_network}",
        f"-o smtpd_authorized_xforward_hosts={hops.filter_network}",
    ]


def _service(name: str, kind: str, command: str, options: list[str], maxproc: str = "-") -> str:
    # Columns: service type private unpriv chroot wakeup maxproc command; "-" is the
    # default (chroot: n since Postfix 3.0, so no files need copying into a jail).
    # A network service cannot be private; a transport must be, for qmgr to find it.
    private = "n" if kind == "inet" else "-"
    head = f"{name:<17} {kind:<5} {private} - - - {maxproc:<3} {command}"
    return "\n".join([head, *(f"    {option}" for option in options)])


def mailbox_main_cf(
    domain: str, users: Sequence[str], base: str, uid: int, gid: int
) -> dict[str, str]:
    """main.cf settings that deliver ``user@domain`` into ``base/user/Maildir/``."""
    mailboxes = ", ".join(f"{user}@{domain}={user}/Maildir/" for user in users)
    return {
        "virtual_mailbox_domains": domain,
        "virtual_mailbox_base": base,
        "virtual_mailbox_maps": f"inline:{{ {mailboxes} }}",  # a trailing "/" means Maildir
        "virtual_uid_maps": f"static:{uid}",
        "virtual_gid_maps": f"static:{gid}",
    }
