"""``spamfilter quarantine``: list, show, release, delete and expire quarantined mail.

    spamfilter quarantine list [--json]
    spamfilter quarantine show ID [--raw]
    spamfilter quarantine release ID... [--relay HOST:PORT|unix:PATH] [--learn-dir MAILDIR]
    spamfilter quarantine delete ID...
    spamfilter quarantine expire --older-than 30d [--dry-run]

The Maildir and the next hop come from the filter's settings file (``quarantine_dir``,
``relay``, ``relay_timeout``, ``hostname``): ``--config FILE``, else ``$SPAMFILTER_CONFIG``;
``--dir`` and ``--relay`` override them. Safe beside a running daemon (see
``spamfilter.smtp.quarantine``). A message that is gone when acted on is reported, and the others
are still done; the exit status is then 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from spamfilter import configload
from spamfilter.cli.common import EXIT_ERROR, CLIError, HelpFormatter
from spamfilter.cli.serve import ENV_PREFIX
from spamfilter.config import FilterConfig
from spamfilter.smtp.quarantine import Entry, NotInQuarantine, Quarantine, header_lines

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
SUBJECT_WIDTH = 50  # characters of the subject in the list table


def add_quarantine_parser(commands) -> None:
    parser = commands.add_parser(
        "quarantine",
        help="list, show, release, delete or expire quarantined mail",
        formatter_class=HelpFormatter,
        description=__doc__.split("\n\n")[1],
    )
    actions = parser.add_subparsers(title="actions", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="YAML", help="the filter's settings file; else $SPAMFILTER_CONFIG"
    )
    common.add_argument("--dir", type=Path, help="the quarantine Maildir (default: quarantine_dir)")

    def action(name: str, help_text: str, run) -> argparse.ArgumentParser:
        sub = actions.add_parser(
            name, help=help_text, parents=[common], formatter_class=HelpFormatter
        )
        sub.set_defaults(command=run)
        return sub

    action("list", "one line per message, oldest first", list_messages).add_argument(
        "--json", action="store_true", help="one JSON object per message and line"
    )
    show = action("show", "print a message: its headers and the text the model read", show_message)
    show.add_argument("id", help="message id (as list prints it)")
    show.add_argument("--raw", action="store_true", help="the stored bytes, exactly")
    release = action(
        "release",
        "deliver messages to the next hop with their original envelope, then delete them",
        release_messages,
    )
    release.add_argument("ids", nargs="+", metavar="ID")
    release.add_argument(
        "--relay", metavar="HOST:PORT|unix:PATH", help="next hop (default: the settings' relay)"
    )
    release.add_argument(
        "--learn-dir",
        type=Path,
        metavar="MAILDIR",
        help="also keep each released message here, to train on as ham",
    )
    action("delete", "delete messages", delete_messages).add_argument(
        "ids", nargs="+", metavar="ID"
    )
    expire = action("expire", "delete messages older than a given age", expire_messages)
    expire.add_argument(
        "--older-than",
        type=duration,
        required=True,
        metavar="AGE",
        help="age by Maildir delivery time: a number and s, m, h, d or w (30d: 30 days)",
    )
    expire.add_argument("--dry-run", action="store_true", help="list them; delete nothing")


def duration(text: str) -> timedelta:
    """argparse type: ``30d``, ``12h``, ``90m``, ``3600s``, ``2w``."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected a number and s, m, h, d or w, not {text!r}")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


# --- the actions ----------------------------------------------------------------------------


def list_messages(args: argparse.Namespace) -> int:
    entries = open_quarantine(args).entries()
    if args.json:
        for entry in entries:
            print(json.dumps(entry_json(entry), ensure_ascii=False))
        return 0
    print(format_table(entries))
    return 0


def show_message(args: argparse.Namespace) -> int:
    from spamfilter.model.mailtext import email_to_text

    quarantine = open_quarantine(args)
    raw = _or_error(quarantine.raw, args.id)
    if args.raw:
        sys.stdout.buffer.write(raw)
        return 0
    for name, value in header_lines(raw):
        print(f"{name}: {value}")
    print("\n--- the text the model read ---")
    print(email_to_text(raw))
    return 0


def release_messages(args: argparse.Namespace) -> int:
    from spamfilter.smtp.release import ReleaseError, release
    from spamfilter.smtp.server import next_hop_connector  # the daemon's own next hop

    config = load_config(args)
    quarantine = open_quarantine(args, config)
    relay = args.relay or config.relay
    try:
        connector = next_hop_connector(dataclasses.replace(config, relay=relay))
    except ValueError as error:
        raise CLIError(f"--relay: {error}") from None
    failed = 0
    for key in args.ids:
        try:
            reply = release(quarantine, key, connector, args.learn_dir)
        except (NotInQuarantine, ReleaseError) as error:
            print(f"spamfilter: error: {key}: not released: {error}", file=sys.stderr)
            failed += 1
            continue
        kept = f"; a copy in {args.learn_dir}" if args.learn_dir else ""
        print(f"{key}: released to {relay} ({reply}){kept}")
    return EXIT_ERROR if failed else 0


def delete_messages(args: argparse.Namespace) -> int:
    quarantine = open_quarantine(args)
    failed = 0
    for key in args.ids:
        try:
            quarantine.delete(key)
        except NotInQuarantine as error:
            print(f"spamfilter: error: {error}", file=sys.stderr)
            failed += 1
            continue
        print(f"{key}: deleted")
    return EXIT_ERROR if failed else 0


def expire_messages(args: argparse.Namespace) -> int:
    quarantine = open_quarantine(args)
    cutoff = datetime.now(UTC) - args.older_than
    old = [entry for entry in quarantine.entries() if entry.received < cutoff]
    deleted = 0
    for entry in old:
        if args.dry_run:
            print(f"{entry.id}: would be deleted (received {_when(entry)})")
            continue
        try:
            quarantine.delete(entry.id)
            deleted += 1
        except NotInQuarantine:
            continue  # gone meanwhile: what expire wanted anyway
    before = cutoff.isoformat(timespec="seconds")
    if args.dry_run:
        print(f"{_messages(len(old))} received before {before}; none deleted (dry run)")
    else:
        print(f"deleted {_messages(deleted)} received before {before}")
    return 0


# --- helpers --------------------------------------------------------------------------------


def load_config(args: argparse.Namespace) -> FilterConfig:
    """The filter's settings from --config (or $SPAMFILTER_CONFIG); defaults without one."""
    path = args.config or os.environ.get(f"{ENV_PREFIX}CONFIG")
    if not path:
        return FilterConfig()
    values = configload.read_yaml(path)
    # This command needs no model; the rest is checked as 'spamfilter serve' checks it.
    placeholder = {"model": values.get("model") or "(not used)"}
    return configload.build(FilterConfig, [(path, values), ("quarantine", placeholder)])


def open_quarantine(args: argparse.Namespace, config: FilterConfig | None = None) -> Quarantine:
    config = config or load_config(args)
    path = args.dir or config.quarantine_dir
    if not path:
        raise CLIError("no quarantine: give --dir MAILDIR, or --config with a quarantine_dir")
    try:
        return Quarantine(path)
    except OSError as error:
        raise CLIError(str(error)) from None


def entry_json(entry: Entry) -> dict:
    return {
        "id": entry.id,
        "received": entry.received.isoformat(timespec="seconds"),
        "sender": entry.sender,
        "recipients": list(entry.recipients),
        "subject": entry.subject,
        "score": entry.score,
        "size": entry.size,
    }


def format_table(entries: list[Entry]) -> str:
    """A fixed-width table of ``entries``, one per line under a heading."""
    rows = [("ID", "RECEIVED (UTC)", "SCORE", "FROM", "TO", "SUBJECT")]
    for entry in entries:
        recipients = entry.recipients[0] if entry.recipients else "-"
        if len(entry.recipients) > 1:
            recipients += f" (+{len(entry.recipients) - 1})"
        score = "-" if entry.score is None else f"{entry.score:.3f}"
        subject = entry.subject[:SUBJECT_WIDTH]
        rows.append((entry.id, _when(entry), score, entry.sender or "-", recipients, subject))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in rows
    ]
    lines.append(_messages(len(entries)))
    return "\n".join(line.rstrip() for line in lines)


def _messages(count: int) -> str:
    return f"{count} message{'' if count == 1 else 's'}"


def _when(entry: Entry) -> str:
    return entry.received.strftime("%Y-%m-%d %H:%M:%S")


def _or_error(read, key: str):
    try:
        return read(key)
    except NotInQuarantine as error:
        raise CLIError(str(error)) from None
