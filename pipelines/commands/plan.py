"""``attnunet plan``: fingerprint a dataset, print the plan, write ``plan.json``."""

from __future__ import annotations

import argparse

from attnunet.atomic import refuse_existing
from attnunet.cli import key_values
from attnunet.pipelines.planning.plan import PLAN_FIELDS, format_plan, plan_dataset, save_plan

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``attnunet plan``."""
    parser.add_argument("data", help="dataset: MSD folder with dataset.json, image/label folders, CSV")
    parser.add_argument(
        "--output", default="plan.json", help="where to write the plan (default: ./%(default)s)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a field ({', '.join(PLAN_FIELDS)}), e.g. roi_size=[64,64,32]; repeatable "
        "(default: none, every field planned)",
    )
    parser.add_argument(
        "--sample-cases",
        type=int,
        default=20,
        help="cases decoded for voxel statistics (default: %(default)s)",
    )
    parser.add_argument(
        "--memory-budget-gb",
        type=float,
        default=None,
        help="memory a training step may use (default: 80%% of the GPU's, 4 GiB on a CPU)",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing plan file (default: off, refuse)"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``attnunet plan``: print the plan's table and write it."""
    refuse_existing([args.output], args.overwrite)  # before the (long) planning, not after
    plan = plan_dataset(
        args.data,
        overrides=key_values(args.set, "--set"),
        sample_cases=args.sample_cases,
        memory_budget_gb=args.memory_budget_gb,
        device=args.device,
    )
    print(format_plan(plan))
    print(f"plan written to {save_plan(plan, args.output)}")
    return 0
