"""FilterConfig: every setting of the SMTP filter daemon, with its one default.

Loaded with ``spamfilter.configload.load(FilterConfig, yaml_path, overrides)``; the command
line flags of ``spamfilter serve`` are derived from these fields (``cli/serve.py``), and
``configs/filter/filter.yaml`` lists every key with its default.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from spamfilter.model.modeldir import probability_problem
from spamfilter.model.precision import (
    DEFAULT_DEVICE,
    DEFAULT_PRECISION,
    Precision,
    device_problem,
)
from spamfilter.smtp import lists
from spamfilter.smtp.endpoint import Endpoint, parse_hostport


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class FilterConfig:
    """The daemon's settings. Thresholds left empty come from the model's spamfilter.json."""

    model: str = field(default="", metadata=_help("model directory written by training"))
    listen: str = field(
        default="127.0.0.1:10025",
        metadata=_help("host:port or unix:/path/to.sock the filter accepts SMTP on"),
    )
    relay: str = field(
        default="127.0.0.1:10026",
        metadata=_help("host:port or unix:/path/to.sock of the next hop mail goes to"),
    )
    allowed_networks: list[str] = field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        metadata=_help("client networks allowed to connect (comma-separated CIDRs); others: 554"),
    )
    hostname: str = field(
        default="", metadata=_help("name in the SMTP greeting; empty: this host's name")
    )
    tls_cert: str = field(
        default="", metadata=_help("PEM certificate (chain) offered with STARTTLS; empty: none")
    )
    tls_key: str = field(default="", metadata=_help("PEM private key of tls_cert"))
    require_starttls: bool = field(
        default=False,
        metadata=_help("530 to every command but EHLO/NOOP/QUIT before STARTTLS (needs tls_cert)"),
    )
    auth_file: str = field(
        default="",
        metadata=_help(
            "'user:scrypt$...' lines (python -m spamfilter.smtp.access USER): AUTH PLAIN/LOGIN "
            "after STARTTLS (needs tls_cert); empty: no AUTH"
        ),
    )
    auth_required: bool = field(
        default=False, metadata=_help("530 to MAIL before a successful AUTH (needs auth_file)")
    )
    tag_threshold: float | None = field(
        default=None, metadata=_help("score at or above which mail is tagged; empty: model's")
    )
    quarantine_threshold: float | None = field(
        default=None,
        metadata=_help("score at or above which mail goes to quarantine_dir; empty: model's"),
    )
    reject_threshold: float | None = field(
        default=None, metadata=_help("score at or above which mail is refused; empty: model's")
    )
    reject: bool = field(
        default=False,
        metadata=_help(
            "answer 550 5.7.1 at the reject threshold; only for before-queue set-ups "
            "(after the queue a 550 makes the MTA bounce to a possibly forged sender)"
        ),
    )
    quarantine_dir: str = field(
        default="",
        metadata=_help("Maildir for quarantined mail (needed with a quarantine threshold)"),
    )
    subject_tag: str = field(
        default="", metadata=_help("text put before the Subject of tagged mail, e.g. '[SPAM] '")
    )
    on_score_error: Literal["pass", "tempfail"] = field(
        default="pass",
        metadata=_help(
            "when scoring fails: pass (relay with X-Spam-Status: unknown) or tempfail (451)"
        ),
    )
    allow: list[str] = field(
        default_factory=list,
        metadata=_help(
            "allow-list entries (sender:, sender-domain:, recipient:, recipient-domain:, "
            "network:): never tagged, quarantined or refused; still scored and headed"
        ),
    )
    deny: list[str] = field(
        default_factory=list,
        metadata=_help("deny-list entries (same kinds; they win over allow): always deny_action"),
    )
    deny_action: Literal["tag", "quarantine", "reject"] = field(
        default="tag",
        metadata=_help(
            "what denylisted mail gets at least: tag, quarantine (needs quarantine_dir) or "
            "reject (550 5.7.1; before-queue set-ups only, like reject)"
        ),
    )
    recipient_thresholds: list[str] = field(
        default_factory=list,
        metadata=_help(
            "per-recipient thresholds: 'recipient:ADDRESS tag=0.3 quarantine=0.9' or "
            "'recipient-domain:DOMAIN ...' (keys tag, quarantine, reject)"
        ),
    )
    lists_file: str = field(
        default="",
        metadata=_help(
            "file of 'allow ENTRY', 'deny ENTRY' and 'thresholds RULE' lines, added to the "
            "above and re-read on SIGHUP; empty: none"
        ),
    )
    precision: Precision = field(
        default=DEFAULT_PRECISION,
        metadata=_help(
            "forward pass: onnx-fp32 or onnx-int8 (ONNX Runtime), fp32, bf16 or int8 (PyTorch); "
            "auto: onnx-int8 on CPUs with int8 dot products (VNNI, AMX; it is refused "
            "elsewhere), else onnx-fp32, and fp32 on a GPU"
        ),
    )
    device: str = field(
        default=DEFAULT_DEVICE,
        metadata=_help("where to score: auto (a CUDA GPU if torch sees one), cpu, cuda, cuda:N"),
    )
    threads: int = field(
        default=0,
        metadata=_help("CPU threads of each model run; 0: the cores, shared by the model_runs"),
    )
    model_runs: int = field(
        default=0,
        metadata=_help(
            "model runs at once, each from its own thread; 0: one per core where each message "
            "runs alone (onnx-int8 on the CPU), else 1"
        ),
    )
    batch_size: int = field(
        default=8,
        metadata=_help(
            "most messages scored in one model call (those that queued while the model was "
            "busy; an idle model scores a message at once)"
        ),
    )
    queue_size: int = field(
        default=256, metadata=_help("messages waiting for the model before new ones get 451")
    )
    score_timeout: float = field(
        default=30.0,
        metadata=_help("seconds a message may wait for its score (then on_score_error)"),
    )
    explain: Literal["off", "tagged", "all"] = field(
        default="tagged",
        metadata=_help(
            "X-Spam-Report (the phrases that read most as spam or ham) for: no message, "
            "messages at or above the tag threshold, every scored message"
        ),
    )
    explain_phrases: int = field(
        default=12,
        metadata=_help("phrases a message's text is cut into to explain it (each scored alone)"),
    )
    explain_timeout: float = field(
        default=2.0,
        metadata=_help("seconds a message may wait for its explanation (then none is added)"),
    )
    relay_timeout: float = field(
        default=120.0, metadata=_help("seconds for each next-hop step; the DATA step in total")
    )
    session_timeout: float = field(
        default=300.0, metadata=_help("seconds a client may stay silent before it is disconnected")
    )
    max_message_size: int = field(
        default=52_428_800, metadata=_help("largest message in bytes (SIZE); larger: 552")
    )
    max_recipients: int = field(
        default=1000, metadata=_help("recipients per message; more: 452 4.5.3")
    )
    max_connections: int = field(
        default=100, metadata=_help("concurrent client connections; more: 421 4.3.2")
    )
    max_messages_per_session: int = field(
        default=1000, metadata=_help("messages per connection; then 421 and disconnect")
    )
    drain_timeout: float = field(
        default=30.0, metadata=_help("seconds SIGTERM waits for messages in flight")
    )
    metrics_listen: str = field(
        default="127.0.0.1:9469",
        metadata=_help("host:port for Prometheus /metrics and /healthz; empty: off"),
    )
    instance_name: str = field(
        default="",
        metadata=_help(
            "this daemon's name in the spamfilter_instance_info metric; "
            "empty: the greeting hostname and the listen address, e.g. 'mx1/10.0.0.5:10025'"
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = field(
        default="INFO", metadata=_help("log level of the spamfilter loggers")
    )

    def validate(self) -> list[str]:
        """Every problem with these settings (empty when usable)."""
        problems = []
        if not self.model:
            problems.append("'model' is required: the model directory to serve")
        for name, parse in [
            ("listen", Endpoint.parse),
            ("relay", Endpoint.parse),
            *([("metrics_listen", parse_hostport)] if self.metrics_listen else []),
        ]:
            try:
                parse(getattr(self, name))
            except ValueError as error:
                problems.append(f"'{name}': {error}")
        for network in self.allowed_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                problems.append(f"'allowed_networks': {network!r} is not a network")
        if problem := device_problem("'device'", self.device):
            problems.append(problem)
        for name in ("tag_threshold", "quarantine_threshold", "reject_threshold"):
            if problem := probability_problem(f"'{name}'", getattr(self, name)):
                problems.append(problem)
        counts = ("batch_size", "queue_size", "max_message_size", "max_recipients")
        counts += ("explain_phrases",)
        for name in (*counts, "max_connections", "max_messages_per_session"):
            if getattr(self, name) < 1:
                problems.append(f"'{name}' must be at least 1")
        for name in ("threads", "model_runs"):
            if getattr(self, name) < 0:
                problems.append(f"'{name}' must be 0 (automatic) or more")
        problems += self._access_problems()
        problems += self._list_problems()
        if not self.subject_tag.isascii():
            problems.append("'subject_tag' must be ASCII (it goes into the raw Subject header)")
        if self.session_timeout <= self.score_timeout + self.explain_timeout + self.relay_timeout:
            # aiosmtpd's idle timer keeps running while DATA is scored and relayed.
            problems.append(
                "'session_timeout' must exceed score_timeout + explain_timeout + relay_timeout, "
                "or a client could be cut off while its message is being relayed"
            )
        return problems

    def _list_problems(self) -> list[str]:
        """Entries that do not parse (the lists_file is read when the rules are built)."""
        problems = []
        for name, parse in (
            ("allow", lists.parse_entry),
            ("deny", lists.parse_entry),
            ("recipient_thresholds", lists.parse_threshold_rule),
        ):
            for text in getattr(self, name):
                try:
                    parse(text)
                except ValueError as error:
                    problems.append(f"'{name}': {error}")
        if self.deny_action == "quarantine" and not self.quarantine_dir:
            problems.append("'deny_action: quarantine' needs quarantine_dir")
        return problems

    def _access_problems(self) -> list[str]:
        """TLS and AUTH settings that depend on each other (see smtp/access.py)."""
        needs = [
            ("tls_key", bool(self.tls_cert) != bool(self.tls_key), "tls_cert and tls_key"),
            ("require_starttls", self.require_starttls and not self.tls_cert, "tls_cert"),
            ("auth_file", self.auth_file and not self.tls_cert, "tls_cert (no AUTH in clear)"),
            ("auth_required", self.auth_required and not self.auth_file, "auth_file"),
        ]
        return [f"'{name}' needs {needed}" for name, wrong, needed in needs if wrong]
