#!/usr/bin/env bash
# Debian's Chromium for tests/test_browser.py, installed where apt-get can as root (CI, containers).
# Elsewhere nothing is installed and that one test is skipped, saying why.
set -u
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing Debian's chromium for the browser test..." >&2
  if apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; then
    exit 0
  fi
  echo "could not install chromium: the browser test will be skipped" >&2
else
  echo "no /usr/bin/chromium, and no apt-get as root to install it: the browser test will be skipped" >&2
fi
exit 0
