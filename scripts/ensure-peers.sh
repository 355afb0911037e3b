#!/usr/bin/env bash
# Install the peer spam filters that 'spamfilter eval --baseline' compares against, if
# missing: Debian packages named as arguments (default: bogofilter, which the tests use).
#   scripts/ensure-peers.sh                                    # make test
#   scripts/ensure-peers.sh bogofilter spamassassin spamd spamc  # the full baseline table
# Only the packages are installed; the baselines train in temporary directories and run a
# private spamd, never the system's. spamassassin's install compiles its rules (minutes).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
packages=("${@:-bogofilter}")
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "ensure-peers: ${missing[*]} missing and cannot be installed here (needs root and apt);" \
        "their baselines and tests will be skipped" >&2
    exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
