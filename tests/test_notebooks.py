"""The notebooks in ``notebooks/`` run top to bottom in a real Jupyter kernel and draw their figures.

Each runs with nbclient in the ``python3`` kernel (ipykernel in this venv), in a temporary working
directory (nothing is written into the repository; the committed ``.ipynb`` files are not modified) and
without ``MLFLOW_TRACKING_URI``, so the tracking notebook uses a sqlite store of its own. Each runs twice
in the same kernel and folder, as "Run All" pressed again does: each notebook writes everything under its
own ``notebook-work/<notebook>/`` folder, whose first cell clears what a rerun would collide with, so the
second run shows the same outputs and nothing else appears beside that folder.
``OMP_NUM_THREADS=1`` keeps the kernel's tiny CPU training from oversubscribing the cores, and
``ATTNUNET_NOTEBOOK_EPOCHS`` cuts the training notebooks to a few epochs: what is checked is that every
cell runs and draws, not how well the model learns.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# notebook -> (figures it draws, text its outputs must show)
EXPECTED = {
    "01_explore_dataset.ipynb": (5, ["labelled cases", "same geometry (affine): True"]),
    "02_train_and_track.ipynb": (
        3,
        ["attention=nonlocal FINISHED", "attention=none FINISHED", "AttentionUNet"],
    ),
    "03_inference_and_attention.ipynb": (
        2,
        ["same affine as the scan: True", "matches the block's output: True"],
    ),
}


def _outputs(notebook: nbformat.NotebookNode) -> tuple[int, str]:
    """The number of PNG figures and the text of every output of the executed notebook."""
    figures, text = 0, []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            figures += "image/png" in data
            text.append(output.get("text", "") + data.get("text/plain", ""))
    return figures, "\n".join(text)


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.mark.long
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs(name, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    env["ATTNUNET_NOTEBOOK_EPOCHS"] = "3"
    expected_figures, expected_text = EXPECTED[name]
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    with client.setup_kernel(env=env):
        # Run All twice in the same kernel, as users do: the second finds the first one's files and state
        for run in ("first", "second"):
            for index, cell in enumerate(notebook.cells):
                client.execute_cell(cell, index)  # raises CellExecutionError with the cell and traceback
            figures, text = _outputs(notebook)
            assert figures == expected_figures, f"{name}, {run} run: {figures} figures"
            for line in expected_text:
                assert line in text, f"{name}, {run} run: expected {line!r} in its outputs"
    # everything the notebook writes is under its own folder, and nothing beside it
    work = tmp_path / "notebook-work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notebook-work"]
    assert sorted(p.name for p in work.iterdir()) == [name.removesuffix(".ipynb")]
    assert any((work / name.removesuffix(".ipynb")).iterdir())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_committed_notebook_shows_its_figures(name):
    """The committed notebook carries its executed outputs (figures included) for readers on GitHub."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    figures, _ = _outputs(notebook)
    assert figures == EXPECTED[name][0]
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code), "run every cell before committing"
    assert not any(o.get("output_type") == "error" for cell in code for o in cell.outputs)
