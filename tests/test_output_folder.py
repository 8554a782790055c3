"""An ``--output`` that cannot be written is refused in one line before any work, by ``train`` and ``infer``
alike (:func:`attnunet.pipelines.data.files.check_writable_folder`)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from attnunet.cli import main
from attnunet.pipelines.data.files import check_writable_folder

# Neither data nor model exists: the output folder is checked before either is looked at.
COMMANDS = {
    "train": ["train", "--data", "no-such-data", "--plan", "none", "--no-track", "--output"],
    "infer": ["infer", "no-such-scan.nii.gz", "--model", "no-such-model.pt", "--output"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_output_under_a_file_is_one_line(tmp_path, capsys, command):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file where a folder would go")
    output = blocker / "run"
    assert main([*COMMANDS[command], str(output)]) == 2
    assert capsys.readouterr().err == (
        f"attnunet {command}: error: --output {output}: {blocker} is a file, not a folder; choose another "
        "--output\n"
    )


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_output_in_a_read_only_folder_is_one_line(tmp_path, capsys, command):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        try:  # root writes through permission bits: nothing to refuse then
            tempfile.TemporaryDirectory(dir=locked).cleanup()
            pytest.skip("this user can write in a folder without write permission (root)")
        except PermissionError:
            pass
        output = locked / "run"
        assert main([*COMMANDS[command], str(output)]) == 2
        assert capsys.readouterr().err == (
            f"attnunet {command}: error: --output {output}: cannot write in {locked} (Permission denied); "
            "choose a folder you can write to as --output\n"
        )
        assert os.listdir(locked) == []
    finally:
        locked.chmod(0o755)


def test_a_writable_output_is_left_as_it_was(tmp_path):
    check_writable_folder(tmp_path / "new" / "run")  # the nearest existing folder is probed
    check_writable_folder(tmp_path)
    assert list(tmp_path.iterdir()) == [] and not Path(tmp_path / "new").exists()
