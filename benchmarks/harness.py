"""What ``network.py`` and ``inference.py`` share: the models compared, one worker per fresh process,
peak memory, the reference row of the ratios, the markdown table, and the JSON copy of the rows."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable

# label -> (attnunet.networks registry name, extra kwargs); REFERENCE is the denominator of the ratios
MODELS = {
    "attnunet nonlocal": ("attention_unet", {"attention": "nonlocal"}),
    "attnunet gate": ("attention_unet", {"attention": "gate"}),
    "attnunet none": ("attention_unet", {"attention": "none"}),
    "MONAI AttentionUnet": ("monai_attention_unet", {}),
    "MONAI UNet": ("monai_unet", {}),
}
REFERENCE = "MONAI AttentionUnet"


def peak_rss_gb() -> float:
    """This process's peak resident set size so far, in GB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def run_worker(script: str, args: list[str]) -> dict:
    """Run ``python script *args`` in a fresh process; its last stdout line is a JSON row.

    A failed worker gives ``{"error": <its last stderr line>}`` so one model's failure (out of memory,
    say) still leaves the others' rows in the table.
    """
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def reference_row(case_rows: list[dict]) -> dict | None:
    """The REFERENCE model's row among one case's rows, or None when it is missing or failed."""
    return next((row for row in case_rows if row["model"] == REFERENCE and "error" not in row), None)


def ratio(row: dict, reference: dict | None, key: str) -> str:
    """``row[key] / reference[key]`` to two decimals, or ``-`` when the reference row is missing."""
    return f"{row[key] / reference[key]:.2f}" if reference else "-"


def print_rows(case_rows: list[dict], columns: dict[str, Callable[[dict, dict | None], str]]) -> None:
    """Print one case's rows as a markdown table: a ``model`` column, then one per ``columns`` entry
    (header -> cell of a row, given the row and the reference row); a failed worker's row says why."""
    reference = reference_row(case_rows)
    print("| model | " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    for row in case_rows:
        if "error" in row:
            cells = [f"failed: {row['error']}"] + [""] * (len(columns) - 1)
        else:
            cells = [cell(row, reference) for cell in columns.values()]
        print(f"| {row['model']} | " + " | ".join(cells) + " |")


def write_json(path: str | None, rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` (the ``--json`` option) when one is given."""
    if path:
        with open(path, "w") as stream:
            json.dump(rows, stream, indent=2)
