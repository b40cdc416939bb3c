#!/usr/bin/env bash
# Browser tests drive Debian's chromium through Playwright (no browser download from Playwright).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
else
  echo "note: /usr/bin/chromium is missing; browser tests will be skipped." >&2
  echo "      install it with: sudo apt-get install chromium" >&2
fi
