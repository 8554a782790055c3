"""What ``network.py`` and ``inference.py`` share: the models compared, one worker per fresh process,
peak memory, the reference row of the ratios, and the JSON copy of the rows."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

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


def write_json(path: str | None, rows: list[dict]) -> None:
    """Write ``rows`` to ``path`` (the ``--json`` option) when one is given."""
    if path:
        with open(path, "w") as stream:
            json.dump(rows, stream, indent=2)
