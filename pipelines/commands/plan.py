"""``attnunet plan``: fingerprint a dataset, print the plan, write ``plan.json``. Its options are declared
once in :data:`PLAN_OPTIONS` (the arguments of :func:`~attnunet.pipelines.planning.plan.plan_dataset`);
the planner (numpy, torch, the readers) is imported by :func:`run` only."""

from __future__ import annotations

import argparse

from attnunet.pipelines.options import Option, add_options, config_overrides, key_value_declaration
from attnunet.pipelines.planning.fields import PLAN_FIELDS

__all__ = ["OPTIONS", "PLAN_OPTIONS", "add_arguments", "run"]

PLAN_OPTIONS: tuple[Option, ...] = (
    Option(
        "data", "dataset: MSD folder with dataset.json, image/label folders, CSV", flag=None, required=True
    ),
    Option("output", "where to write the plan (default: ./%(default)s)", "plan.json"),
    Option(
        "overrides",
        f"override a field ({', '.join(PLAN_FIELDS)}), e.g. roi_size=[64,64,32]; repeatable "
        "(default: none, every field planned)",
        {},
        **key_value_declaration("--set"),
    ),
    Option("sample_cases", "cases decoded for voxel statistics (default: %(default)s)", 20, type=int),
    Option(
        "step_memory_gb",
        "memory a training step may use, in GiB (default: 80%% of the GPU's, 4 GiB on a CPU)",
        type=float,
    ),
    Option("device", "cpu or cuda (default: cuda when available)"),
    Option("overwrite", "replace an existing plan file (default: off, refuse)", False, action="store_true"),
)

OPTIONS = PLAN_OPTIONS  # every command module's declaration, under one name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``attnunet plan``."""
    add_options(parser, PLAN_OPTIONS)


def run(args: argparse.Namespace) -> int:
    """Run ``attnunet plan``: print the plan's table and write it."""
    from attnunet.atomic import refuse_existing
    from attnunet.pipelines.planning.plan import format_plan, plan_dataset, save_plan

    refuse_existing([args.output], args.overwrite)  # before the (long) planning, not after
    options = config_overrides(PLAN_OPTIONS, args)
    plan = plan_dataset(
        options.pop("data"),
        **{key: value for key, value in options.items() if key not in ("output", "overwrite")},
    )
    print(format_plan(plan))
    print(f"plan written to {save_plan(plan, args.output)}")
    return 0
