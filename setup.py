"""The wheel's build step (the rest of the metadata is in pyproject.toml).

The schema is a Sqitch project that must stay where Sqitch and the
repository expect it: ``sqitch.plan`` and ``sqitch.conf`` at the root, the
scripts under ``sqitch/``. Package data cannot reach files outside a
package's directory, and a second copy (or a symlink, which a wheel does not
keep) inside ``eventstore/`` would drift from the plan. So building copies
the project, as it is in the source tree, into the built ``eventstore``
package as ``eventstore/_sqitch/`` (``sqitch.conf``'s relative ``plan_file``
and ``top_dir`` hold there too); ``eventstore.sqitch`` finds it there in an
installed package, and at the repository root in a checkout
(docs/packaging.md).

The repository's own programs that are not the installed product — the
demo session (``make demo``) and the backup/restore drill (``make drill``)
— stay out of the wheel.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: The Sqitch project, relative to the repository root.
SQITCH_FILES = ("sqitch.plan", "sqitch.conf")
SQITCH_DIRS = ("sqitch/deploy", "sqitch/revert", "sqitch/verify")
#: Where the built package keeps it.
PACKAGED = Path("eventstore", "_sqitch")
#: Modules of the repository that the wheel leaves out: (package, module).
REPOSITORY_ONLY = frozenset({("storectl", "demo"), ("storectl", "drill")})


class BuildWithSchema(build_py):
    """``build_py`` that leaves out the repository-only programs and adds
    the Sqitch project to the ``eventstore`` package."""

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        modules: list[tuple[str, str, str]] = super().find_package_modules(package, package_dir)
        return [m for m in modules if (m[0], m[1]) not in REPOSITORY_ONLY]

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install runs from the checkout
            return
        target = Path(self.build_lib) / PACKAGED
        if target.exists():
            shutil.rmtree(target)
        for name in SQITCH_FILES:
            self.mkpath(str(target))
            self.copy_file(str(ROOT / name), str(target / name))
        for name in SQITCH_DIRS:
            scripts = sorted((ROOT / name).glob("*.sql"))
            if not scripts:
                raise SystemExit(f"setup.py: no Sqitch scripts in {ROOT / name}")
            self.mkpath(str(target / name))
            for script in scripts:
                self.copy_file(str(script), str(target / name / script.name))


setup(cmdclass={"build_py": BuildWithSchema})
