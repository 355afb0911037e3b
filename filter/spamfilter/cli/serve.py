"""``spamfilter serve``: run the SMTP content filter.

    spamfilter serve --model runs/x --listen 127.0.0.1:10025 --relay 127.0.0.1:10026 \\
        [--config configs/filter/filter.yaml]

One flag per ``FilterConfig`` field, each also read from ``SPAMFILTER_<NAME>``; a YAML
file, then the environment, then the flags override the field's default. The daemon
itself is ``spamfilter.smtp.server.FilterDaemon``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging.config
import os
import sys
from typing import Any

from spamfilter import configload
from spamfilter.cli.common import HelpFormatter
from spamfilter.config import FilterConfig
from spamfilter.model.modeldir import ModelDirError

ENV_PREFIX = "SPAMFILTER_"


def serve(argv: list[str]) -> int:
    """``spamfilter serve``: flags (and environment variables) -> FilterConfig -> daemon."""
    parser = argparse.ArgumentParser(
        prog="spamfilter serve",
        description="Run the SMTP content filter.",
        formatter_class=HelpFormatter,
    )
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per FilterConfig field, each also read from SPAMFILTER_<NAME>."""
    parser.add_argument(
        "--config",
        metavar="YAML",
        help=f"settings file (e.g. configs/filter/filter.yaml); env {ENV_PREFIX}CONFIG",
    )
    docs = configload.field_docs(FilterConfig)
    for field in dataclasses.fields(FilterConfig):
        default = field.default_factory() if callable(field.default_factory) else field.default
        if isinstance(default, list):
            default = ",".join(default)
        help_text = f"{docs[field.name]} (default: {default!r}; env {_env_name(field.name)})"
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(
                flag,
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag, dest=field.name, metavar=field.name.upper(), default=None, help=help_text
            )


def run_serve(args: argparse.Namespace) -> int:
    """``spamfilter serve``: 0 after a clean stop, 2 when the filter cannot start."""
    from spamfilter.smtp.server import FilterDaemon  # torch: only when serving

    config_path = args.config or os.environ.get(f"{ENV_PREFIX}CONFIG")
    environment = {
        field.name: os.environ[_env_name(field.name)]
        for field in dataclasses.fields(FilterConfig)
        if _env_name(field.name) in os.environ
    }
    flags = {
        field.name: getattr(args, field.name)
        for field in dataclasses.fields(FilterConfig)
        if getattr(args, field.name, None) is not None
    }

    def load() -> FilterConfig:
        sources: list[tuple[str, dict[str, Any]]] = []
        if config_path:
            sources.append((config_path, configload.read_yaml(config_path)))
        sources += [("environment", environment), ("command line", flags)]
        return configload.build(FilterConfig, sources)

    try:
        config = load()
        configure_logging(config.log_level)
        daemon = FilterDaemon(config, load)
        daemon.setup()
        asyncio.run(daemon.serve())
    except (configload.ConfigError, ModelDirError, ValueError, OSError) as error:
        print(f"spamfilter serve: cannot start: {error}", file=sys.stderr)
        return 2
    return 0


def configure_logging(level: str) -> None:
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
            "loggers": {
                "spamfilter": {"level": level, "handlers": ["stderr"]},
                # aiosmtpd logs every command at INFO; its warnings and errors still show.
                "mail.log": {"level": "WARNING", "handlers": ["stderr"]},
            },
        }
    )


def _env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()
