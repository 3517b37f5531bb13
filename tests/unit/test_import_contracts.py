"""`make lint`'s layering rules fail where they should: a deliberate import circle, a private
name used across modules, and the project's .importlinter applying them to every package.

The deliberate breaches live in throwaway packages under tmp_path, checked by the real
``lint-imports`` with the same contract types the project's config uses.
"""

from __future__ import annotations

import configparser
import subprocess
import sys
import textwrap
from pathlib import Path

from voicepool_devstack.import_contracts import PrivateUse, private_uses

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"voicepool_operator", "voicepool_worker", "voicepool_devstack", "voicepool_contract"}


def write_package(root: Path, name: str, modules: dict[str, str]) -> None:
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for module, source in modules.items():
        (pkg / f"{module}.py").write_text(textwrap.dedent(source))


def lint(root: Path, package: str) -> subprocess.CompletedProcess[str]:
    """lint-imports on ``package`` with the project's circle and private-name contracts."""
    config = root / "layering.ini"
    config.write_text(
        textwrap.dedent(
            f"""\
            [importlinter]
            root_packages =
                {package}
            contract_types =
                private_names: voicepool_devstack.import_contracts.PrivateNamesContract

            [importlinter:contract:no-circles]
            name = no circles
            type = acyclic_siblings
            ancestors =
                {package}

            [importlinter:contract:private-names]
            name = no private names across modules
            type = private_names
            packages =
                {package}
            """
        )
    )
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), str(config), "--no-cache"],
        cwd=root,  # lint-imports puts its working directory on sys.path
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_deliberate_circle_fails_and_names_its_imports(tmp_path: Path) -> None:
    write_package(
        tmp_path,
        "circle",
        {
            "servers": "from .stack import free_port\n",
            "stack": "from . import servers\n\ndef free_port() -> int:\n    return 0\n",
            "leaf": "",
        },
    )
    proc = lint(tmp_path, "circle")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no circles BROKEN" in proc.stdout
    assert "No cycles are allowed in circle." in proc.stdout
    assert ".servers -> .stack" in proc.stdout or ".stack -> .servers" in proc.stdout
    assert "no private names across modules KEPT" in proc.stdout


def test_a_private_name_across_modules_fails_and_names_it(tmp_path: Path) -> None:
    write_package(
        tmp_path,
        "leaky",
        {
            "helpers": "def _kill_group() -> None: ...\n",
            "prometheus": "from .helpers import _kill_group\n",
            "sip": "from . import helpers\n\nhelpers._kill_group()\n",
        },
    )
    proc = lint(tmp_path, "leaky")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no private names across modules BROKEN" in proc.stdout
    assert "leaky.prometheus -> leaky.helpers._kill_group (l.1)" in proc.stdout
    assert "leaky.sip -> leaky.helpers._kill_group (l.3)" in proc.stdout
    assert "no circles KEPT" in proc.stdout


def test_a_clean_package_passes(tmp_path: Path) -> None:
    write_package(
        tmp_path,
        "clean",
        {
            "procs": "def free_port() -> int:\n    return _pick()\n\n"
            "def _pick() -> int:\n    return 0\n",
            "stack": "from .procs import free_port\n\nclass S:\n    _own = free_port()\n",
        },
    )
    proc = lint(tmp_path, "clean")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_private_uses_reads_relative_imports_and_module_attributes() -> None:
    modules = {"pkg", "pkg.a", "pkg.sub", "pkg.sub.b"}
    source = textwrap.dedent(
        """\
        from .. import a
        from ..a import _x, y, __all__
        from . import b as bee
        import pkg.a
        bee._z()
        pkg.a._w
        self._own = 1
        """
    )
    found = sorted(private_uses("pkg.sub.c", source, False, modules))
    assert found == [
        PrivateUse("pkg.sub.c", "pkg.a", "_w", 6),
        PrivateUse("pkg.sub.c", "pkg.a", "_x", 2),
        PrivateUse("pkg.sub.c", "pkg.sub.b", "_z", 5),
    ]


def test_the_project_config_applies_every_rule_to_every_package() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / ".importlinter")

    def listed(section: str, option: str) -> set[str]:
        return set(cfg[f"importlinter:contract:{section}"][option].split())

    assert set(cfg["importlinter"]["root_packages"].split()) == PACKAGES
    assert cfg["importlinter:contract:no-circles"]["type"] == "acyclic_siblings"
    assert listed("no-circles", "ancestors") == PACKAGES
    assert cfg["importlinter:contract:private-names"]["type"] == "private_names"
    assert listed("private-names", "packages") == PACKAGES
    assert listed("private-modules", "packages_with_private_modules") == PACKAGES
    for pure in ("pure-planner", "pure-worker"):
        assert cfg[f"importlinter:contract:{pure}"]["type"] == "forbidden"
        assert {"asyncio", "socket", "livekit"} <= listed(pure, "forbidden_modules")
