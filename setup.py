"""Packaging hook: the wheel carries the bundled PushT demos, so `robopolicy demo` works from any directory.

The checkout keeps datasets at the top level (``datasets/``, non-Python artifacts); the build copies each bundled
one into the package as ``robopolicy/_bundled/<name>``, where ``robopolicy.configs.bundled_dataset`` finds it.
An editable install reads them from the checkout instead. Everything else is in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLED_DATASETS = {"pusht": Path("datasets/pusht/lerobot"), "pusht_mirror": Path("datasets/pusht_mirror/lerobot")}


class BuildPyWithDatasets(build_py):
    def run(self) -> None:
        super().run()
        for name, source in BUNDLED_DATASETS.items():
            if not (source / "meta" / "info.json").is_file():
                raise FileNotFoundError(f"{source}: bundled dataset missing from the source tree")
            target = Path(self.build_lib) / "robopolicy" / "_bundled" / name
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)


setup(cmdclass={"build_py": BuildPyWithDatasets})
