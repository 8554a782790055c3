"""Every command option is declared once (:mod:`attnunet.pipelines.options`): ``TrainConfig``'s fields for
``train``, a tuple of ``Option`` for the other commands. What is built from a declaration (argparse) or
written beside it (the bundle configs, the pipeline functions' defaults, the registries a flag's choices
mirror) is checked against it here, so a default changed in one place and not the others fails; README.md's
option table is checked in test_readme.py.

And the command line imports only what it runs: ``attnunet CMD --help`` loads no MLflow, ignite,
``monai.bundle`` or training engine.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from attnunet.cli import COMMANDS, main
from attnunet.defaults import OVERLAP
from attnunet.pipelines.bundle.paths import bundle_template_dir
from attnunet.pipelines.commands import cv, demo, evaluate, export, infer, plan, summary, sync, view
from attnunet.pipelines.engines import config as train_config
from attnunet.pipelines.engines.config import PLAN_OPTION, TrainConfig, planned_config, train_options
from attnunet.pipelines.options import SAME, Option
from attnunet.pipelines.planning.fields import TRAIN_FIELDS

ROOT = Path(__file__).parents[1]
CONFIGS = bundle_template_dir() / "configs"
# command -> (its bundle config, its declaration, the config entry that calls the pipeline)
BUNDLED: dict[str, tuple[str, list[Option], str]] = {
    "train": ("train.json", train_options(), "config"),
    "infer": ("inference.json", list(infer.INFER_OPTIONS), "inference"),
    "evaluate": ("evaluate.json", list(evaluate.EVALUATE_OPTIONS), "evaluation"),
}
DECLARED: dict[str, list[Option]] = {
    **{command: options for command, (_, options, _) in BUNDLED.items()},
    "plan": list(plan.PLAN_OPTIONS),
    "demo": list(demo.OPTIONS),
    "sync": list(sync.OPTIONS),
    "summary": list(summary.SUMMARY_OPTIONS),
    "export": list(export.EXPORT_OPTIONS),
    "cv": list(cv.OPTIONS),
    "view": list(view.OPTIONS),
}
# Config keys that are the bundle's own structure, not options.
STRUCTURE = {
    "bundle_root",
    "model_path",
    "network_def",
    "config",
    "training",
    "inference",
    "evaluation",
    "run",
}


def _parser(command: str) -> argparse.ArgumentParser:
    """The parser ``attnunet COMMAND`` builds (the command table's module, as attnunet.cli.main)."""
    parser = argparse.ArgumentParser(prog=f"attnunet {command}")
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    return parser


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if action.dest != "help"}


def test_every_command_but_bundle_declares_its_options():
    # `bundle init` is one sub-command with its own parser; its options are init_bundle's arguments
    assert set(COMMANDS) - set(DECLARED) == {"bundle"}
    for command, options in DECLARED.items():
        assert list(importlib.import_module(COMMANDS[command][0]).OPTIONS) == options, command


@pytest.mark.parametrize("command", sorted(DECLARED))
def test_argparse_has_the_declared_options_and_defaults(command):
    actions = _actions(_parser(command))
    declared = {opt.key: opt for opt in DECLARED[command]}
    assert set(actions) == set(declared), f"{command}: flags and declaration differ"
    for key, opt in declared.items():
        action = actions[key]
        assert action.default == (None if opt.required else opt.parsed_default), f"{command} {key}"
        assert (action.option_strings[:1] or [None])[0] == opt.option_string, f"{command} {key}"


def test_train_declaration_is_train_config():
    """Each flag's value without the flag is TrainConfig's default, or None for a field the plan fills."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    actions = _actions(_parser("train"))
    assert set(actions) == (set(fields) - {"applied_plan"}) | {"plan"}
    for name, f in fields.items():
        if name in ("data", "output", "applied_plan"):
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        opt = next(opt for opt in train_options() if opt.key == name)
        if name in TRAIN_FIELDS:
            assert actions[name].default is None and opt.config_default is None, name
        else:
            assert opt.config_default == default, name
    # --plan is planned_config's argument of that name
    assert inspect.signature(planned_config).parameters["plan"].default == PLAN_OPTION.default


def _same(declared: Any, function_default: Any) -> bool:
    """A declared config value and a pipeline function's default mean the same: equal, a one-item list
    for a scalar (tolerance_mm), or an empty container for None (no regions)."""
    if declared == function_default or declared == [function_default]:
        return True
    return function_default is None and declared in ({}, [])


@pytest.mark.parametrize("command", sorted(BUNDLED))
def test_bundle_config_keys_and_defaults_are_the_declared_ones(command):
    name, options, entry = BUNDLED[command]
    config = json.loads((CONFIGS / name).read_text())
    declared = {opt.key: opt for opt in options}
    keys = set(config) - STRUCTURE
    assert not keys - set(declared), f"{name} has keys no option declares: {sorted(keys - set(declared))}"
    assert not set(declared) - keys, f"{name} lacks the options {sorted(set(declared) - keys)}"
    for key, opt in declared.items():
        if opt.required:  # data, input, output...: the bundle's own paths under bundle_root
            continue
        expected = opt.config_default if opt.bundle is SAME else opt.bundle
        assert config[key] == expected, f"{name}#{key} is {config[key]!r}; its option declares {expected!r}"
    # The entry that runs the pipeline passes each key on, and the function's own default agrees.
    call = config[entry]
    passed = {value[1:]: argument for argument, value in call.items() if str(value).startswith("@")}
    assert set(declared) <= set(passed), f"{name}#{entry} does not pass {sorted(set(declared) - set(passed))}"
    module, _, function = call["_target_"].rpartition(".")
    parameters = inspect.signature(getattr(importlib.import_module(module), function)).parameters
    for key, argument in passed.items():
        if argument in parameters and parameters[argument].default is not inspect.Parameter.empty:
            assert _same(declared[key].config_default, parameters[argument].default), (
                f"{call['_target_']} {key}"
            )


def test_multi_gpu_configs_set_only_declared_options():
    declared = {opt.key for opt in train_options()} | {opt.key for opt in evaluate.EVALUATE_OPTIONS}
    for name in ("multi_gpu_train.json", "multi_gpu_evaluate.json"):
        keys = {key for key in json.loads((CONFIGS / name).read_text()) if "#" not in key} - STRUCTURE
        assert keys <= declared, f"{name}: {sorted(keys - declared)} are not options"


def test_choices_spelled_out_for_help_are_the_registries():
    from attnunet.export import ONNX_OPSET
    from attnunet.pipelines.data.datasets import CACHE_MODES
    from attnunet.pipelines.inference.apply import BLEND_MODES
    from attnunet.pipelines.inference.predict import OUTPUT_FORMATS
    from attnunet.transforms.presets import PRESETS

    assert tuple(PRESETS) == train_config.PRESET_NAMES
    assert train_config.CACHE_MODES == CACHE_MODES
    # the registry as the package builds it: tests and doctests register networks of their own
    fresh = "from attnunet.networks import list_networks; print(','.join(list_networks()))"
    built_in = subprocess.run([sys.executable, "-c", fresh], capture_output=True, text=True, check=True)
    assert tuple(built_in.stdout.strip().split(",")) == train_config.NETWORKS
    assert infer.BLEND_MODES == BLEND_MODES and tuple(OUTPUT_FORMATS) == infer.OUTPUT_FORMATS
    assert export.ONNX_OPSET == ONNX_OPSET


@pytest.mark.parametrize(
    ("module", "function", "own"),
    [
        (plan, "attnunet.pipelines.planning.plan.plan_dataset", ("output", "overwrite")),
        (demo, "attnunet.pipelines.demo.run.run_demo", ()),
        (sync, "attnunet.pipelines.engines.sync.sync_run", ()),
    ],
)
def test_options_are_the_arguments_of_the_function_the_command_calls(module, function, own):
    """``plan``, ``demo`` and ``sync`` call one function with their options as its keyword arguments: the
    declared defaults are the function's (``own``: the command's options the function does not take)."""
    module_name, _, name = function.rpartition(".")
    parameters = inspect.signature(getattr(importlib.import_module(module_name), name)).parameters
    for opt in module.OPTIONS:
        if opt.key in own:
            continue
        assert opt.key in parameters, f"{function} takes no {opt.key}"
        if not opt.required and parameters[opt.key].default is not inspect.Parameter.empty:
            assert _same(opt.config_default, parameters[opt.key].default), f"{function} {opt.key}"


def test_one_overlap_for_validation_inference_and_the_plan():
    from attnunet.pipelines.planning import plan as planning
    from attnunet.spec import ModelSpec

    assert TrainConfig.overlap == ModelSpec.overlap == OVERLAP == 0.5
    assert 'overrides.get("overlap", OVERLAP)' in inspect.getsource(planning._training)


@pytest.mark.parametrize(
    ("command", "old"),
    [("plan", "--memory-budget-gb"), ("train", "--memory-budget-gb")],
)
def test_the_old_memory_flag_is_refused(command, old, capsys):
    args = ["--data", "d", "--output", "o"] if command == "train" else ["d"]
    with pytest.raises(SystemExit) as stop:
        main([command, *args, old, "1"])
    assert stop.value.code == 2 and f"unrecognized arguments: {old}" in capsys.readouterr().err


HEAVY = ("mlflow", "ignite", "monai.bundle", "attnunet.pipelines.engines.training")


def test_help_of_every_command_imports_nothing_heavy():
    """``attnunet CMD --help`` for every command, in one fresh interpreter: none of HEAVY is imported."""
    code = (
        "import contextlib, io, sys\n"
        "from attnunet.cli import COMMANDS, main\n"
        "for command in [None, *COMMANDS]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(['--help'] if command is None else [command, '--help'])\n"
        f"print(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in {HEAVY!r})))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout


def test_infer_help_by_importtime_loads_neither_torch_nor_mlflow():
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "attnunet", "infer", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert "usage: attnunet infer" in result.stdout
    assert not imported & {*HEAVY, "torch", "monai"}, sorted(imported & {*HEAVY, "torch", "monai"})
