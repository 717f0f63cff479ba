"""Packaging: the SDK and the client commands install without the daemons'
dependencies, a daemon without them says in one line what to install, and an
editable install leaves the twistd plugins visible."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from pigeonpush.plugin import INSTALL_HINT, SERVER_DEPENDENCIES

ROOT = Path(__file__).resolve().parent.parent

#: Run first in a fresh interpreter: every import of a server dependency fails.
BLOCK_SERVER_DEPENDENCIES = textwrap.dedent(
    f"""
    import sys
    from importlib.abc import MetaPathFinder

    class Refuse(MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.partition(".")[0] in {sorted(SERVER_DEPENDENCIES)!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    for name in list(sys.modules):
        if name.partition(".")[0] in {sorted(SERVER_DEPENDENCIES)!r}:
            del sys.modules[name]
    """
)


def run_without_server_dependencies(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.run(
        [sys.executable, "-c", BLOCK_SERVER_DEPENDENCIES + textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_server_extra_matches_the_plugins_list() -> None:
    """setup.cfg's server extra is what pigeonpush.plugin recognises as missing."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    extra = config["options.extras_require"]["server"].split("\n")
    names = {Requirement(line).name for line in extra if line.strip()}
    assert names == SERVER_DEPENDENCIES
    required = config["options"]["install_requires"].split("\n")
    base = {Requirement(line).name for line in required if line.strip()}
    assert base == {"twisted", "treq", "attrs", "zope.interface"}
    assert config["metadata"]["license_files"].strip() == "LICENSE"
    assert "MIT License" in (ROOT / "LICENSE").read_text()


def test_sdk_and_client_commands_need_no_server_dependency() -> None:
    result = run_without_server_dependencies(
        """
        import pigeonpush.sdk, pigeonpush.cli, pigeonpush.plugin
        from pigeonpush.cli import build_parser
        for command in ("listen", "send", "status"):
            build_parser(command)
        import twisted.plugins.pigeon_server
        print("imported")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "imported"


def test_the_blocker_blocks() -> None:
    """The check above would catch a server dependency imported by the SDK."""
    result = run_without_server_dependencies("import pigeonpush.store.redis_connection")
    assert result.returncode != 0
    assert re.search("No module named '(hiredis|txredisapi)'", result.stderr)


@pytest.mark.parametrize(
    "tapname",
    [
        "pigeon-server",
        "pigeon-reglog",
        "pigeon-delivery",
        "pigeon-notification",
        "pigeon-standalone",
    ],
)
def test_daemon_without_server_extra_says_what_to_install(tapname: str) -> None:
    result = run_without_server_dependencies(
        f"""
        sys.argv = ["twistd", "-n", "--pidfile=", {tapname!r}, "--help"]
        from twisted.scripts.twistd import run
        run()
        """
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{tapname} needs the server extra (")
    assert lines[0].endswith(f": {INSTALL_HINT}")


def test_an_unrelated_import_error_is_not_hidden() -> None:
    """Only a missing server dependency becomes the one-line hint."""
    from pigeonpush.plugin import import_tap

    with pytest.raises(ModuleNotFoundError):
        import_tap("pigeonpush.no_such_tap", "pigeon-nothing")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_editable_install_in_a_fresh_venv(tmp_path: Path) -> None:
    """``pip install -e .`` (from PyPI) brings no server dependency and leaves the
    plugins visible to ``twistd``; ``pip install -e '.[server]'`` makes them run."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(part) for part in command],
            cwd=tmp_path,
            env=environ,
            capture_output=True,
            text=True,
            timeout=540,
        )

    pip = [bin_dir / "python", "-m", "pip", "--disable-pip-version-check", "-q"]
    installed = run(*pip, "install", "-e", ROOT)
    assert installed.returncode == 0, installed.stderr
    python = bin_dir / "python"
    assert run(python, "-c", "import txredisapi").returncode != 0
    assert run(python, "-c", "import pigeonpush.sdk").returncode == 0

    listed = run(bin_dir / "twistd", "--help")
    assert listed.returncode == 0, listed.stderr
    for tapname in ("pigeon-server", "pigeon-reglog", "pigeon-standalone"):
        assert tapname in listed.stdout
    without = run(bin_dir / "twistd", "pigeon-server", "--help")
    assert without.returncode == 1
    assert without.stderr.strip().endswith(INSTALL_HINT)

    installed = run(*pip, "install", "-e", f"{ROOT}[server]")
    assert installed.returncode == 0, installed.stderr
    with_extra = run(bin_dir / "twistd", "pigeon-server", "--help")
    assert with_extra.returncode == 0, with_extra.stderr
    assert "--zookeeper" in with_extra.stdout
    # The licence travels with the distribution.
    licensed = run(
        python,
        "-c",
        "import importlib.metadata as m; "
        "print(any(f.name == 'LICENSE' for f in m.files('pigeonpush')))",
    )
    assert licensed.stdout.strip() == "True", licensed.stderr
