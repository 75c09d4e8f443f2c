"""Imports `cetrt` from the copy named by CETRT_SOURCE_ROOT, not from the editable install (tests/mutants/).

The editable install maps cetrt, cetrt.export, ... to the real checkout's folders; this finder, first on the
meta path, maps every name under those packages into the copy instead, by the same
[tool.setuptools.package-dir] table (read from the copy's pyproject.toml). On PYTHONPATH, it reaches every
Python process the tests start (console scripts included). Without CETRT_SOURCE_ROOT it does nothing.
"""

import importlib.util
import os
import sys

import tomllib

_ROOT = os.environ.get("CETRT_SOURCE_ROOT")


class _CopyFinder:
    def __init__(self, root: str):
        with open(os.path.join(root, "pyproject.toml"), "rb") as f:
            self.dirs = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
        self.root = root

    def find_spec(self, name, path=None, target=None):
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            prefix = ".".join(parts[:i])
            if prefix in self.dirs:
                base = os.path.join(self.root, self.dirs[prefix], *parts[i:])
                init = os.path.join(base, "__init__.py")
                if os.path.isfile(init):
                    return importlib.util.spec_from_file_location(name, init, submodule_search_locations=[base])
                if os.path.isfile(base + ".py"):
                    return importlib.util.spec_from_file_location(name, base + ".py")
                return None
        return None


if _ROOT:
    sys.meta_path.insert(0, _CopyFinder(_ROOT))
