"""Every docstring example of the package runs (``doctest``); examples that need data or a trained model
are marked ``# doctest: +SKIP`` where they stand."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import attnunet
import attnunet.pipelines
import attnunet.transforms


def _modules() -> list[str]:
    names = []
    for package in (attnunet, attnunet.transforms, attnunet.pipelines):
        names.append(package.__name__)
        found = pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
        names += [info.name for info in found if not info.name.endswith("__main__")]  # it runs the CLI
    return sorted(set(names))


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (see above)"
