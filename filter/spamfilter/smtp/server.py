"""The filter daemon: start-up, serving, SIGHUP reload, SIGTERM drain.

``spamfilter serve`` (``spamfilter.cli.serve``) builds its ``FilterConfig`` and runs it.

Phases (each a method of ``FilterDaemon``):
1. ``setup``: settings, model and policy. Any problem raises here, before a port opens:
   an MTA must never hand mail to a filter that cannot score it.
2. ``start``: the micro-batcher, the SMTP listener, the metrics/health endpoint.
3. ``serve``: until SIGTERM/SIGINT; SIGHUP calls ``reload``: the config file, the
   thresholds in the model's spamfilter.json and, when the model directory (or the
   ``current`` symlink it is reached by) now holds other weights, the new model. Anything
   that cannot be used (a bad config, a corrupt or mismatched model) is logged and what
   is in force kept.
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
from pathlib import Path
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

# Settings bound at start-up (sockets, the scoring backend and thread). The model may
# change on SIGHUP.
RESTART_ONLY = (
    *("listen", "metrics_listen", "precision", "device", "threads", "model_runs", "queue_size"),
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
        self._reload_task: asyncio.Task[None] | None = None
        # Batchers of models replaced on SIGHUP, finishing the messages they hold.
        self._retiring: dict[MicroBatcher, asyncio.Task[None]] = {}

    # 1. set-up ---------------------------------------------------------------------------
    def setup(self, scorer: Scorer | None = None, explainer: Explain | None = None) -> None:
        """Load the model and build the rules; raises ModelDirError/ValueError if unusable.

        ``scorer`` replaces the model directory's classifier (fault-injection tests); the
        messages are then explained by ``explainer`` only (none when it is None).
        """
        config = self.config
        self.model_dir = Path(config.model).resolve()  # a symlink's target now
        if scorer is None:
            scorer, explainer = self._load_model(config, self.model_dir)
        self.scorer = scorer
        self.explainer = explainer
        self.model_id = model_id(self.model_dir)
        self.rules = build_rules(config, self.model_dir, self.model_id)
        self.gate = access.Gate(config.allowed_networks, config.max_connections, self.metrics)
        self.tls_context = (
            access.tls_context(config.tls_cert, config.tls_key) if config.tls_cert else None
        )
        self.authenticator = access.PasswordFile(config.auth_file) if config.auth_file else None

    @staticmethod
    def _load_model(config: FilterConfig, directory: Path) -> tuple[Classifier, Explainer]:
        classifier = Classifier(
            directory, config.precision, config.threads or None, config.device, config.model_runs
        )
        log.info(
            "scoring with %s on %s, %d model run(s) at once",
            classifier.precision,
            classifier.device,
            classifier.runs_at_once,
        )
        return classifier, Explainer(classifier, config.explain_phrases, config.batch_size)

    # 2. start ----------------------------------------------------------------------------
    async def start(self) -> None:
        config = self.config
        self.batcher, self.explain_batcher = self._batchers_for(self.scorer, self.explainer)
        self.metrics.queue_depth.set_function(lambda: self.batcher.depth)
        self.handler = FilterHandler(
            self.rules,
            self.batcher,
            next_hop_connector(config),
            self.metrics,
            self._reporter(self.explain_batcher),
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
        self.instance_name = name
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

    def _batchers_for(
        self, scorer: Scorer, explainer: Explain | None
    ) -> tuple[MicroBatcher, MicroBatcher | None]:
        """Started micro-batchers for a model's scores and (if any) its explanations."""
        config = self.config
        batcher = MicroBatcher(
            scorer.score_raw,
            max_batch=config.batch_size,
            queue_size=config.queue_size,
            on_batch=self.metrics.observe_batch,
            # the model's runs at once; a stand-in scorer (tests) takes one batch at a time
            workers=scorer.runs_at_once if isinstance(scorer, Classifier) else 1,
        )
        batcher.start()
        if explainer is None:
            return batcher, None
        explaining = MicroBatcher(
            explainer.explain_raw, max_batch=config.batch_size, queue_size=config.queue_size
        )
        explaining.start()
        return batcher, explaining

    def _reporter(self, explain_batcher: MicroBatcher | None) -> Reporter | None:
        return Reporter(explain_batcher, self.metrics) if explain_batcher is not None else None

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
        """SIGHUP: settings, thresholds, and the model if its weights changed (see ``_reload``).

        Runs as a task, after any reload still in progress.
        """
        previous = self._reload_task
        self._reload_task = asyncio.get_running_loop().create_task(self._reload(previous))

    async def _reload(self, previous: asyncio.Task[None] | None) -> None:
        """Read the config and the model card; load a new model in a worker thread while
        sessions go on, then swap the model and the rules together, between two messages.

        A message that has begun scoring finishes on the old model, with its id in the
        headers; the next ones go to the new model. On any error nothing changes.
        """
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        try:
            config = self._load_config()
            kept = {name: getattr(self.config, name) for name in RESTART_ONLY}
            changed = [name for name, value in kept.items() if getattr(config, name) != value]
            if changed:
                log.warning("reload: %s only change on restart; kept", ", ".join(changed))
            config = dataclasses.replace(config, **kept)
            model_dir, identity, loaded = await asyncio.to_thread(self._model_for, config)
            rules = build_rules(config, model_dir, identity)
        except (configload.ConfigError, ModelDirError, ValueError, OSError) as error:
            self.metrics.reloads.labels("error").inc()
            log.error("reload failed, keeping the running config and model: %s", error)
            return
        if loaded is not None:
            self._swap_model(model_dir, identity, *loaded)
        self.config = config
        self.rules = self.handler.rules = rules
        self.handler.connector = next_hop_connector(config)
        self.gate.configure(config.allowed_networks, config.max_connections)
        self.metrics.reloads.labels("ok").inc()
        log.info(
            "reloaded: tag=%g quarantine=%s reject=%s; lists: %d allow, %d deny, "
            "%d thresholds; model=%s",
            rules.policy.tag,
            rules.policy.quarantine,
            rules.policy.reject,
            len(rules.lists.allow),
            len(rules.lists.deny),
            len(rules.lists.thresholds),
            self.model_id,
        )

    def _model_for(
        self, config: FilterConfig
    ) -> tuple[Path, str, tuple[Classifier, Explainer] | None]:
        """The model directory ``config`` names now, its id, and a new classifier and
        explainer for it when it is not the model serving (None when it is). Runs in a
        worker thread.

        Loading refuses what start-up refuses (a missing, corrupt or mismatched model); any
        other failure to load is refused too: a reload must never stop a running filter.
        """
        directory = Path(config.model).resolve()
        identity = model_id(directory)
        if directory == self.model_dir and identity == self.model_id:
            return directory, identity, None
        log.info("reload: loading %s from %s", identity, directory)
        try:
            return directory, identity, self._load_model(config, directory)
        except ModelDirError:
            raise
        except Exception as error:
            raise ModelDirError(f"{directory}: cannot load the model: {error}") from None

    def _swap_model(
        self, model_dir: Path, identity: str, scorer: Classifier, explainer: Explainer
    ) -> None:
        """Serve ``scorer`` from now on; the old model's batchers finish what they hold."""
        old = [self.batcher, self.explain_batcher]
        old_id = self.model_id
        self.model_dir, self.model_id = model_dir, identity
        self.scorer, self.explainer = scorer, explainer
        self.batcher, self.explain_batcher = self._batchers_for(scorer, explainer)
        self.handler.scorer = self.batcher
        self.handler.reporter = self._reporter(self.explain_batcher)
        self.metrics.describe(self.instance_name, identity)
        for batcher in old:
            if batcher is not None:
                task = asyncio.get_running_loop().create_task(batcher.retire())
                self._retiring[batcher] = task
                task.add_done_callback(lambda _, b=batcher: self._retiring.pop(b, None))
        log.info("reload: %s replaces %s (messages already scoring finish on it)", identity, old_id)

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
        if self._reload_task is not None:
            self._reload_task.cancel()  # a model still loading is not wanted any more
            await asyncio.gather(self._reload_task, return_exceptions=True)
        for batcher, task in list(self._retiring.items()):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await batcher.aclose()
        if hasattr(self, "batcher"):
            await self.batcher.aclose()
        if getattr(self, "explain_batcher", None) is not None:
            await self.explain_batcher.aclose()


def build_rules(config: FilterConfig, model_dir: Path, loaded_model_id: str) -> Rules:
    """The rules from ``config`` and the current spamfilter.json of the model serving."""
    card = read_card(model_dir)
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
