#!/bin/sh
# Debian's chromium for the one browser test (tests/test_report.py), installed only when that
# upgrades nothing already on the machine: apt's --no-upgrade covers the named package, not its
# dependencies, so the plan is simulated first and any "Inst <pkg> [<installed version>]" line
# (an upgrade) means no install. Exit 1 (and the browser test skips) when it cannot be done.
set -u
plan=$(apt-get -s -q install --no-upgrade chromium 2>/dev/null) ||
    { apt-get update -q >/dev/null 2>&1 && plan=$(apt-get -s -q install --no-upgrade chromium); } ||
    exit 1
upgrades=$(printf '%s\n' "$plan" | grep -c '^Inst [^ ]* \[')
if [ "$upgrades" -gt 0 ]; then
    echo "chromium would upgrade $upgrades installed package(s): not installed" >&2
    exit 1
fi
exec apt-get install -y -q --no-upgrade chromium
