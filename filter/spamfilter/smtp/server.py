"""The filter daemon: start-up, serving, SIGHUP reload, SIGTERM drain.

``spamfilter serve`` (``spamfilter.cli.serve``) builds its ``FilterConfig`` and runs it.

Phases (each a method of ``FilterDaemon``):
1. ``setup``: settings, model and policy. Any problem raises here, before a port opens:
   an MTA must never hand mail to a filter that cannot score it.
2. ``start``: the micro-batcher, the SMTP listener, the metrics/health endpoint.
3. ``serve``: until SIGTERM/SIGINT; SIGHUP calls ``reload`` (thresholds from the model's
   spamfilter.json and the config file; a bad new config is logged and the old kept).
4. ``drain``: stop listening, refuse new transactions, close idle sessions with 421, let
   sessions in a transaction finish for up to ``drain_timeout`` seconds, then cut the rest
   (they were not answered 250, so their MTAs still hold the mail).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import socket
from collections.abc import Callable, Sequence
from typing import Protocol

from spamfilter import configload
from spamfilter.config import FilterConfig
from spamfilter.model.classifier import Classifier, Scorer
from spamfilter.model.explain import Explainer, Explanation
from spamfilter.model.modeldir import ModelDirError, model_id, read_card
from spamfilter.smtp import access, lists
from spamfilter.smtp.batcher import MicroBatcher
from spamfilter.smtp.endpoint import Endpoint, parse_hostport
from spamfilter.smtp.handler import FilterHandler, Rules
from spamfilter.smtp.policy import Policy
from spamfilter.smtp.prometheus import FilterMetrics, serve_http
from spamfilter.smtp.protocol import FilterSMTP
from spamfilter.smtp.relay import SmtpConnector
from spamfilter.smtp.spamreport import Reporter
from spamfilter.smtp.xforward import XForwardSMTP

log = logging.getLogger(__name__)

# Settings bound at start-up (sockets, the loaded model, the scoring thread).
RESTART_ONLY = (
    *("model", "listen", "metrics_listen", "precision", "device", "threads", "queue_size"),
    "explain_phrases",
    *("tls_cert", "tls_key", "auth_file", "instance_name"),
)
SHUTDOWN_REPLY = "421 4.3.2 The filter is shutting down, try again later"


class Explain(Protocol):
    """What the daemon needs to explain messages (``model.explain.Explainer``)."""

    def explain_raw(self, messages: Sequence[bytes]) -> list[Explanation]: ...


class FilterDaemon:
    def __init__(self, config: FilterConfig, load_config: Callable[[], FilterConfig]) -> None:
        self.config = config
        self._load_config = load_config
        self.metrics = FilterMetrics()
        self._stop = asyncio.Event()
        self.started = asyncio.Event()
        self._servers: list[asyncio.Server] = []

    # 1. set-up ---------------------------------------------------------------------------
    def setup(self, scorer: Scorer | None = None, explainer: Explain | None = None) -> None:
        """Load the model and build the rules; raises ModelDirError/ValueError if unusable.

        ``scorer`` replaces the model directory's classifier (fault-injection tests); the
        messages are then explained by ``explainer`` only (none when it is None).
        """
        config = self.config
        if scorer is None:
            classifier = Classifier(
                config.model, config.precision, config.threads or None, config.device
            )
            scorer = classifier
            explainer = explainer or Explainer(
                classifier, config.explain_phrases, config.batch_size
            )
        self.scorer = scorer
        self.explainer = explainer
        self.model_id = model_id(config.model)
        self.rules = build_rules(config, self.model_id)
        self.gate = access.Gate(config.allowed_networks, config.max_connections, self.metrics)
        self.tls_context = (
            access.tls_context(config.tls_cert, config.tls_key) if config.tls_cert else None
        )
        self.authenticator = access.PasswordFile(config.auth_file) if config.auth_file else None

    # 2. start ----------------------------------------------------------------------------
    async def start(self) -> None:
        config = self.config
        self.batcher = MicroBatcher(
            self.scorer.score_raw,
            max_batch=config.batch_size,
            queue_size=config.queue_size,
            on_batch=self.metrics.observe_batch,
        )
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)
        self.batcher.start()
        reporter = None
        if self.explainer is not None:
            self.explain_batcher = MicroBatcher(
                self.explainer.explain_raw,
                max_batch=config.batch_size,
                queue_size=config.queue_size,
            )
            self.explain_batcher.start()
            reporter = Reporter(self.explain_batcher, self.metrics)
        self.handler = FilterHandler(
            self.rules, self.batcher, next_hop_connector(config), self.metrics, reporter
        )
        self.listening = Endpoint.parse(config.listen)
        smtp = await self.listening.serve(self._protocol)
        self._servers.append(smtp)
        self.listening = self.listening.bound(smtp)
        # (host, port) for TCP, the socket path for a Unix socket
        self.smtp_address = self.listening.path or (self.listening.host, self.listening.port)
        if config.metrics_listen:
            host, port = parse_hostport(config.metrics_listen)
            http = await serve_http(self.metrics, self._healthy, host, port)
            self._servers.append(http)
            self.metrics_address = http.sockets[0].getsockname()[:2]
        name = config.instance_name or default_instance_name(config, self.listening)
        self.metrics.describe(name, self.model_id)
        log.info(
            "serving %s on %s, relaying to %s, tag=%g, metrics on %s, instance %s",
            self.model_id,
            self.listening,
            config.relay,
            self.rules.policy.tag,
            config.metrics_listen or "(off)",
            name,
        )

    def _protocol(self) -> FilterSMTP:
        config = self.config
        messages = config.max_messages_per_session
        return XForwardSMTP(
            self.handler,
            self.gate,
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,  # keep the bytes as sent
            hostname=greeting_name(config),
            timeout=config.session_timeout,
            tls_context=self.tls_context,
            require_starttls=config.require_starttls,
            authenticator=self.authenticator,
            auth_required=config.auth_required,
            command_call_limit={
                "MAIL": messages,
                "DATA": messages,
                "RCPT": messages * config.max_recipients,
                "*": 2 * messages + 100,  # RSET, NOOP, EHLO... (MTAs RSET between messages)
            },
            loop=asyncio.get_running_loop(),
        )

    def _healthy(self) -> bool:
        return self.handler.accepting and self.batcher.running

    # 3. serve ----------------------------------------------------------------------------
    async def serve(self, handle_signals: bool = True) -> None:
        """Start, serve until SIGTERM/SIGINT (or ``stop``), then drain and clean up.

        Signal handlers need the main thread; tests serving from another thread pass
        ``handle_signals=False`` and call ``stop``/``reload`` through the loop instead.
        """
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) if handle_signals else ()
        try:
            await self.start()
            for signum in signals:
                loop.add_signal_handler(
                    signum, self.reload if signum == signal.SIGHUP else self.stop
                )
            self.started.set()
            await self._stop.wait()
            log.info("stopping: draining sessions for up to %g s", self.config.drain_timeout)
            await self.drain()
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)
            await self.close()

    def reload(self) -> None:
        """SIGHUP: new thresholds and settings; on any error keep the old ones."""
        try:
            config = self._load_config()
            kept = {name: getattr(self.config, name) for name in RESTART_ONLY}
            changed = [name for name, value in kept.items() if getattr(config, name) != value]
            if changed:
                log.warning("reload: %s only change on restart; kept", ", ".join(changed))
            config = dataclasses.replace(config, **kept)
            if model_id(config.model) != self.model_id:
                raise ModelDirError(f"{config.model}: the weights changed; restart to load them")
            rules = build_rules(config, self.model_id)
        except (configload.ConfigError, ModelDirError, ValueError, OSError) as error:
            self.metrics.reloads.labels("error").inc()
            log.error("reload failed, keeping the running config: %s", error)
            return
        self.config = config
        self.rules = self.handler.rules = rules
        self.handler.connector = next_hop_connector(config)
        self.gate.configure(config.allowed_networks, config.max_connections)
        self.metrics.reloads.labels("ok").inc()
        log.info(
            "reloaded: tag=%g quarantine=%s reject=%s; lists: %d allow, %d deny, %d thresholds",
            rules.policy.tag,
            rules.policy.quarantine,
            rules.policy.reject,
            len(rules.lists.allow),
            len(rules.lists.deny),
            len(rules.lists.thresholds),
        )

    # 4. drain ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask ``serve`` to drain and return (what SIGTERM does)."""
        self._stop.set()

    async def drain(self) -> None:
        self.handler.accepting = False
        for server in self._servers[:1]:  # the SMTP listener; metrics stay up while draining
            server.close()
        deadline = asyncio.get_running_loop().time() + self.config.drain_timeout
        while self.gate.live and asyncio.get_running_loop().time() < deadline:
            for protocol in list(self.gate.live):
                if not protocol.in_transaction:
                    protocol.close_with(SHUTDOWN_REPLY)
            await asyncio.sleep(0.05)
        for protocol in list(self.gate.live):
            log.warning("drain timeout: cutting a session in a transaction (not answered 250)")
            protocol.close_with(SHUTDOWN_REPLY)
        await asyncio.sleep(0)  # let connection_lost run

    async def close(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        if hasattr(self, "listening"):
            self.listening.remove_socket_file()
        if hasattr(self, "batcher"):
            await self.batcher.aclose()
        if hasattr(self, "explain_batcher"):
            await self.explain_batcher.aclose()


def build_rules(config: FilterConfig, loaded_model_id: str) -> Rules:
    """The rules from ``config`` and the model directory's current spamfilter.json."""
    card = read_card(config.model)
    policy = Policy.build(config, card, loaded_model_id)
    found = lists.from_config(
        config.allow, config.deny, config.recipient_thresholds, config.lists_file
    )
    for rule in found.thresholds:
        if rule.reject is not None and policy.reject is None:
            raise ValueError(f"recipient thresholds {rule.entry}: reject= needs 'reject: true'")
        if rule.quarantine is not None and not config.quarantine_dir:
            raise ValueError(f"recipient thresholds {rule.entry}: quarantine= needs quarantine_dir")
    return Rules(
        policy=policy,
        quarantine_dir=config.quarantine_dir,
        score_timeout=config.score_timeout,
        max_recipients=config.max_recipients,
        lists=found,
        explain=config.explain,
        explain_timeout=config.explain_timeout,
    )


def greeting_name(config: FilterConfig) -> str:
    """The name in our SMTP greeting and in our EHLO to the next hop."""
    return config.hostname or socket.gethostname()


def default_instance_name(config: FilterConfig, bound: Endpoint) -> str:
    """``greeting-host/address:port`` (or ``/unix:path``): two daemons on one host differ
    by where they listen."""
    if bound.path or ":" not in bound.host:
        return f"{greeting_name(config)}/{bound}"
    return f"{greeting_name(config)}/[{bound.host}]:{bound.port}"


def next_hop_connector(config: FilterConfig) -> SmtpConnector:
    """The next hop of ``config.relay``: the daemon's, and ``quarantine release``'s."""
    return SmtpConnector(Endpoint.parse(config.relay), config.relay_timeout, greeting_name(config))
