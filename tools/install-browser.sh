#!/bin/sh
# Debian's chromium and chromium-driver for the browser tests (tests/test_web_browser.py).
# As root (CI) they are installed when missing; otherwise this says what to run, and the tests fail loudly.
set -e
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # Wait for dpkg's lock rather than fail when another apt-get (the container tooling's) holds it.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    chromium chromium-driver
else
  echo "browser tests need /usr/bin/chromium and /usr/bin/chromedriver: run as root, or" >&2
  echo "  sudo apt-get install chromium chromium-driver" >&2
fi
