"""README.md speaks of the repository alone and lists every option with the config key it sets."""

from __future__ import annotations

import difflib
import importlib
import re
from pathlib import Path

from attnunet.cli import COMMANDS
from attnunet.pipelines.options import readme_rows

README = (Path(__file__).parents[1] / "README.md").read_text()
CONFIGS = {"train": "train.json", "infer": "inference.json", "evaluate": "evaluate.json"}


def test_readme_has_no_paths_outside_the_repository():
    assert "../shared" not in README and "pipelines/bundles/" not in README


def test_the_options_table_is_what_help_says():
    """Each row of README.md's option table: the flag, the config key it sets and its help as ``--help``
    shows it (defaults filled in), generated from the one declaration of each option
    (:func:`attnunet.pipelines.options.readme_rows`); the expected rows are in the failure message."""
    table = [line for line in README.splitlines() if re.match(rf"^\| `({'|'.join(CONFIGS)})` \|", line)]
    expected = [
        row
        for command, config in CONFIGS.items()
        for row in readme_rows(command, config, importlib.import_module(COMMANDS[command][0]).OPTIONS)
    ]
    assert table == expected, "README.md's option table differs from --help:\n" + "\n".join(
        difflib.unified_diff(table, expected, "README.md", "declared", lineterm="")
    )
