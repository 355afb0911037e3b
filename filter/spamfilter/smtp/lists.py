"""Allow and deny lists, and per-recipient thresholds: mail judged by more than its score.

An entry is ``kind:value``; the same words name it in ``X-Spam-Status`` and the log:

    sender:ADDRESS           the envelope sender, or the address in the From header
    sender-domain:DOMAIN     the domain of either (``.example.com``: its subdomains)
    recipient:ADDRESS        an envelope recipient
    recipient-domain:DOMAIN  the domain of an envelope recipient (``.example.com`` too)
    network:CIDR             the client: the MTA's XFORWARD ADDR, else the connecting peer

``allow`` and ``deny`` (FilterConfig) hold entries; ``recipient_thresholds`` holds rules
``recipient:ADDRESS tag=0.3 quarantine=0.9`` (``recipient-domain:`` too; keys ``tag``,
``quarantine``, ``reject``). ``lists_file`` names a file with more, one per line:
``allow ENTRY``, ``deny ENTRY`` or ``thresholds RULE``; ``#`` starts a comment.

Precedence, for each recipient: a matching deny entry wins over any allow entry (a
deny cannot be abused by a forger, an allow can: see docs/hardening.md, "Allow lists
and spoofing"); either one wins over the recipient's thresholds. Of several threshold
rules, the recipient's address wins over its domain, then the first listed wins.
Addresses and domains compare case-insensitively. An allow entry matches the From
header only when it names one address; a deny entry matches any address in it.
"""

from __future__ import annotations

import email.utils
import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from spamfilter.smtp.headers import field_name, split_fields

Action = Literal["allow", "deny"]
KINDS = ("sender", "sender-domain", "recipient", "recipient-domain", "network")
THRESHOLD_KEYS = ("tag", "quarantine", "reject")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_XTEXT = re.compile(r"\+([0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class Entry:
    """One ``kind:value`` entry, its value normalized for matching."""

    kind: str
    value: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"

    def matches(self, facts: Facts, recipient: str, action: Action = "deny") -> bool:
        """Whether ``recipient``'s copy matches; ``action`` decides which From addresses
        count (``Facts.senders``)."""
        if self.kind == "network":
            return facts.client is not None and facts.client in _network(self.value)
        if self.kind.startswith("recipient"):
            addresses: Iterable[str] = (recipient.lower(),)
        else:
            addresses = facts.senders(action)
        if self.kind.endswith("domain"):
            return any(_in_domain(address, self.value) for address in addresses)
        return self.value in addresses


@dataclass(frozen=True)
class Listing:
    """Why a recipient's mail is not judged by its score alone: the entry that matched."""

    action: Action
    entry: Entry

    @property
    def denied(self) -> bool:
        return self.action == "deny"

    def __str__(self) -> str:
        """As X-Spam-Status and the log say it: ``allowlisted=sender-domain:example.com``."""
        return f"{self.action}listed={self.entry}"


@dataclass(frozen=True)
class ThresholdRule:
    """Thresholds for the recipients an entry matches (None: the filter's own)."""

    entry: Entry
    tag: float | None = None
    quarantine: float | None = None
    reject: float | None = None

    def changes(self) -> dict[str, float]:
        return {key: getattr(self, key) for key in THRESHOLD_KEYS if getattr(self, key) is not None}


@dataclass(frozen=True)
class Facts:
    """What entries are matched against, besides the recipient."""

    sender: str = ""  # the envelope sender; "" or "<>" for the null sender
    from_addresses: tuple[str, ...] = ()  # the From header's addresses (known at DATA)
    client: IPAddress | None = None

    def senders(self, action: Action) -> tuple[str, ...]:
        """The sender addresses (lower case) an ``action`` entry may match."""
        envelope = (self.sender.lower(),) if self.sender not in ("", "<>") else ()
        header = self.from_addresses if action == "deny" or len(self.from_addresses) == 1 else ()
        return envelope + header


@dataclass(frozen=True)
class Lists:
    """Every entry in force; replaced as a whole on SIGHUP."""

    allow: tuple[Entry, ...] = ()
    deny: tuple[Entry, ...] = ()
    thresholds: tuple[ThresholdRule, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny or self.thresholds)

    def listing(self, facts: Facts, recipient: str) -> Listing | None:
        """The deny entry, else the allow entry, that ``recipient``'s copy matches."""
        for action, entries in (("deny", self.deny), ("allow", self.allow)):
            for entry in entries:
                if entry.matches(facts, recipient, action):
                    return Listing(action, entry)
        return None

    def thresholds_for(self, recipient: str) -> ThresholdRule | None:
        """The recipient's rule: one for its address before one for its domain."""
        rules = sorted(self.thresholds, key=lambda rule: rule.entry.kind != "recipient")
        return next((rule for rule in rules if rule.entry.matches(Facts(), recipient)), None)

    def extended(self, other: Lists) -> Lists:
        return Lists(
            self.allow + other.allow, self.deny + other.deny, self.thresholds + other.thresholds
        )


def parse_entry(text: str) -> Entry:
    """``'sender-domain:Example.COM'`` -> Entry; ValueError saying what is wrong."""
    kind, colon, value = text.strip().partition(":")
    kind, value = kind.lower(), value.strip()
    if not colon or kind not in KINDS:
        raise ValueError(f"{text!r}: expected KIND:VALUE with KIND one of {', '.join(KINDS)}")
    if not value:
        raise ValueError(f"{text!r}: nothing after '{kind}:'")
    if kind == "network":
        try:
            return Entry(kind, str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            raise ValueError(f"{text!r}: {value!r} is not a network") from None
    value = value.lower()
    if kind.endswith("domain"):
        if "@" in value or not re.fullmatch(r"\.?[^\s.]+(\.[^\s.]+)*", value):
            raise ValueError(f"{text!r}: {value!r} is not a domain")
    elif not re.fullmatch(r"[^\s@]+@[^\s@]+", value):
        raise ValueError(f"{text!r}: {value!r} is not an address (local@domain)")
    return Entry(kind, value)


def parse_threshold_rule(text: str) -> ThresholdRule:
    """``'recipient:ceo@example.net tag=0.3'`` -> ThresholdRule; ValueError if malformed."""
    head, *settings = text.split() or [""]
    entry = parse_entry(head)
    if not entry.kind.startswith("recipient"):
        raise ValueError(
            f"{text!r}: thresholds are per recipient (recipient: or recipient-domain:)"
        )
    values: dict[str, float] = {}
    for setting in settings:
        key, equals, number = setting.partition("=")
        if key not in THRESHOLD_KEYS or not equals:
            raise ValueError(
                f"{text!r}: expected {'=, '.join(THRESHOLD_KEYS)}= followed by a number"
            )
        try:
            values[key] = float(number)
        except ValueError:
            raise ValueError(f"{text!r}: {number!r} is not a number") from None
        if not 0.0 < values[key] < 1.0:
            raise ValueError(f"{text!r}: {key} must lie strictly between 0 and 1")
    if not values:
        raise ValueError(f"{text!r}: no threshold given (tag=, quarantine=, reject=)")
    return ThresholdRule(entry, **values)


def from_config(
    allow: Sequence[str], deny: Sequence[str], thresholds: Sequence[str], lists_file: str = ""
) -> Lists:
    """The lists of FilterConfig's ``allow``, ``deny`` and ``recipient_thresholds``, then
    those of ``lists_file``; ValueError naming the setting, or the file and line."""
    lists = Lists(
        tuple(parse_entry(text) for text in allow),
        tuple(parse_entry(text) for text in deny),
        tuple(parse_threshold_rule(text) for text in thresholds),
    )
    return lists.extended(read_lists_file(lists_file)) if lists_file else lists


def read_lists_file(path: str) -> Lists:
    """The lists in the file at ``path``; OSError, or ValueError naming the file and line."""
    found: dict[str, list] = {"allow": [], "deny": [], "thresholds": []}
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        action, _, rest = line.partition(" ")
        try:
            if action == "thresholds":
                found[action].append(parse_threshold_rule(rest.strip()))
            elif action in ("allow", "deny"):
                found[action].append(parse_entry(rest))
            else:
                raise ValueError(
                    f"{line!r}: expected 'allow ENTRY', 'deny ENTRY' or 'thresholds RULE'"
                )
        except ValueError as error:
            raise ValueError(f"{path}:{number}: {error}") from None
    return Lists(*(tuple(found[key]) for key in ("allow", "deny", "thresholds")))


def from_addresses(raw: bytes) -> tuple[str, ...]:
    """The addresses in ``raw``'s From header fields, lower case (``()`` if none)."""
    fields, _ = split_fields(raw)
    values = [
        f.partition(b":")[2].decode("utf-8", "replace").replace("\r", "").replace("\n", "")
        for f in fields
        if field_name(f) == b"from"
    ]
    return tuple(
        address.lower() for _, address in email.utils.getaddresses(values) if "@" in address
    )


def client_address(xforward_addr: str, peer: object) -> IPAddress | None:
    """The client's IP: the MTA's XFORWARD ADDR (xtext, ``IPV6:`` prefix) if it gave one,
    else the connecting peer's; None for a Unix-socket peer or an unavailable address."""
    candidate = _XTEXT.sub(lambda match: chr(int(match.group(1), 16)), xforward_addr)
    if candidate.upper().startswith("IPV6:"):
        candidate = candidate[5:]
    if not candidate and isinstance(peer, tuple):
        candidate = str(peer[0])
    try:
        return ipaddress.ip_address(candidate.split("%")[0])
    except ValueError:
        return None  # [UNAVAILABLE], a Unix socket, nothing


@functools.lru_cache(maxsize=4096)
def _network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(value)


def _in_domain(address: str, domain: str) -> bool:
    host = address.rpartition("@")[2]
    return host.endswith(domain) if domain.startswith(".") else host == domain
