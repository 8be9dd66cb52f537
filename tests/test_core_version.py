"""An archive records the core (the installed package's pipeline) it was built with; a worker with another refuses
to start, saying both versions and how to rebuild."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from handler.model import VARIANTS
from handler.settings import ARCHIVE_INFO, ArchiveInfo, SettingsError, core_version

# initialize() alone, as TorchServe's worker calls it, from an unpacked archive.
RUNNER = textwrap.dedent(
    """
    import json, logging, sys
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model_dir = sys.argv[1]
    sys.path.insert(0, model_dir)
    import u2net_handler
    from ts.context import Context

    manifest = json.load(open(f"{model_dir}/MAR-INF/MANIFEST.json"))
    context = Context("u2netp", model_dir, manifest, 8, None, "0.12.0", metrics=None, model_yaml_config={})
    u2net_handler.U2NetHandler().initialize(context)
    print("initialized")
    """
)


def test_the_core_version_is_the_packages_version_and_a_digest_of_its_modules() -> None:
    version, _, digest = core_version().partition("+")
    assert version and len(digest) == 12 and core_version() == core_version()


def test_archive_info_round_trips_its_core_and_checks_it(tmp_path: Path) -> None:
    info = ArchiveInfo(VARIANTS["u2netp"], "random (seed 0)", "cpu")
    info.write(tmp_path)
    read = ArchiveInfo.read(tmp_path)
    assert read == info and read.core == core_version()
    read.check_core()
    with pytest.raises(SettingsError, match=r"built with u2serve core 9\.9\+abc.*has .*rebuild the archive"):
        ArchiveInfo(VARIANTS["u2netp"], "w", "cpu", core="9.9+abc").check_core()
    legacy = json.loads((tmp_path / ARCHIVE_INFO).read_text())
    del legacy["core"]
    (tmp_path / ARCHIVE_INFO).write_text(json.dumps(legacy))
    with pytest.raises(SettingsError, match="none recorded"):
        ArchiveInfo.read(tmp_path).check_core()


@pytest.mark.parametrize("matching", [True, False])
def test_a_worker_with_another_core_refuses_to_start(unpacked_archive, tmp_path: Path, matching: bool) -> None:
    model_dir = tmp_path / "u2netp"
    shutil.copytree(unpacked_archive("u2netp"), model_dir)
    if not matching:
        info = json.loads((model_dir / ARCHIVE_INFO).read_text())
        info["core"] = "0.0.1+000000000000"
        (model_dir / ARCHIVE_INFO).write_text(json.dumps(info))
    run = subprocess.run([sys.executable, "-c", RUNNER, str(model_dir)], capture_output=True, text=True, timeout=300)
    if matching:
        assert run.returncode == 0 and "initialized" in run.stdout, run.stderr[-2000:]
        return
    assert run.returncode != 0 and "initialized" not in run.stdout
    line = next(x for x in run.stderr.splitlines() if x.startswith("ERROR"))
    assert "u2netp: this archive was built with u2serve core 0.0.1+000000000000" in line
    assert f"the worker's Python has {core_version()}" in line and "make archives" in line
