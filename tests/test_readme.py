"""README.md speaks of the repository alone and lists every option with the config key it sets."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from attnunet.cli import COMMANDS

README = (Path(__file__).parents[1] / "README.md").read_text()
CONFIGS = {"train": "train.json", "infer": "inference.json", "evaluate": "evaluate.json"}


def test_readme_has_no_paths_outside_the_repository():
    assert "../shared" not in README and "pipelines/bundles/" not in README


@pytest.mark.parametrize("command", sorted(CONFIGS))
def test_every_flag_is_in_the_options_table_with_its_key(command):
    parser = argparse.ArgumentParser()
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    for action in parser._actions:
        if action.dest == "help":
            continue
        flag = action.option_strings[0] if action.option_strings else action.dest.upper()
        row = re.search(
            rf"^\| `{command}` \| `{re.escape(flag)}[^`]*` \| `{CONFIGS[command]}#(\S+)` \|", README, re.M
        )
        assert row, f"README's option table lacks {command} {flag}"
        assert row.group(1).split("#")[0].rstrip("`") in (
            action.dest,
            action.dest.replace("_option", "_kwargs"),
        )
