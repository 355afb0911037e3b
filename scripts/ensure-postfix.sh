#!/usr/bin/env bash
# Install Debian's postfix for the integration tests (tests/test_postfix.py) if missing.
# Only the package is installed: the tests run private instances under temporary
# directories and never start or configure the system's Postfix.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
command -v postfix >/dev/null && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "ensure-postfix: postfix is missing and cannot be installed here (needs root and apt);" \
        "tests/test_postfix.py will skip (or fail, with CI set)" >&2
    exit 0
fi
# debconf: install the files only ("No configuration"); the tests write their own.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null
