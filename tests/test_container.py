"""tools/container.py's readings of the host, on fixed text: cgroup layout, Debian source, pip settings."""

from __future__ import annotations

import pytest

from tools.container import EngineError, cgroup_unified, debian_source, pip_settings

HYBRID = """tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
UNIFIED = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"
BOOKWORM = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_CODENAME=bookworm\n'
DEB822 = """Types: deb
URIs: http://deb.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_cgroup_layout():
    assert cgroup_unified(UNIFIED)
    assert not cgroup_unified(HYBRID)  # crun refuses it: the test writes runtime = "runc"


def test_debian_source_from_deb822_and_one_line_sources():
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    assert debian_source(BOOKWORM, [("debian.sources", DEB822)]) == ("bookworm", "http://deb.example/debian", keyring)
    one_line = "deb [arch=amd64] http://mirror.example/debian bookworm main contrib\n"
    assert debian_source(BOOKWORM, [("sources.list", one_line)]) == ("bookworm", "http://mirror.example/debian", None)


def test_debian_source_refuses_a_host_without_one():
    with pytest.raises(EngineError, match="no Debian bookworm main archive"):
        debian_source(BOOKWORM, [("other.list", "deb http://x.example/apt stable main\n")])
    with pytest.raises(EngineError, match="not a Debian host"):
        debian_source("ID=ubuntu\nVERSION_CODENAME=noble\n", [])


def test_pip_settings_environment_wins_in_global():
    listing = """global.cert='/etc/ssl/a.crt'
global.extra-index-url='file:///opt/pypi/simple https://idx.example/simple'
install.no-compile='1'
:env:.cert='/etc/ssl/b.crt'
:env:.find-links='/opt/wheels'
"""
    assert pip_settings(listing) == {
        "global": {"cert": "/etc/ssl/b.crt", "extra-index-url": "file:///opt/pypi/simple https://idx.example/simple",
                   "find-links": "/opt/wheels"},
        "install": {"no-compile": "1"},
    }  # fmt: skip
