"""The thin runner behind ``attnunet train|infer``: the template bundle's own config, with the command's
flags as overrides of the keys of the same names, parsed by MONAI's ``ConfigParser``.

So the command line and ``python -m monai.bundle run`` build one pipeline from one config: a key
renamed or a default changed in ``configs/*.json`` changes both.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

from attnunet.atomic import atomic_output
from attnunet.pipelines.bundle.paths import bundle_template_dir
from attnunet.pipelines.data.files import check_writable_folder
from attnunet.pipelines.engines.config import TrainConfig, TrainResult
from attnunet.pipelines.engines.training import train

__all__ = ["run_config", "train_to"]

# What ConfigParser reads as an expression, a reference or a macro at the start of a string.
_CONFIG_SYNTAX = ("$", "@", "%")


def _strings(value: Any) -> list[str]:
    """Every string in ``value`` and in the lists and dicts (keys and values) it holds: ConfigParser
    parses each of them."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in _strings(item)]
    return []


def run_config(name: str, key: str, overrides: Mapping[str, Any]) -> Any:
    """Parse ``key`` of the template bundle's ``configs/NAME`` with ``overrides`` set first.

    Args:
        name: ``"train.json"`` or ``"inference.json"``.
        key: the entry to build (building it runs it: ``"training"``, ``"inference"``, ``"evaluation"``).
        overrides: config key -> value, as the command's flags give them.

    Raises:
        ValueError: a value (or an item of a list or dict value) starts with ``$``, ``@`` or ``%``,
            which the parser would run or follow.

    Example:
        >>> run_config("train.json", "training", {"data": "Task04", "output": "run"})  # doctest: +SKIP
    """
    for option, value in overrides.items():
        for text in _strings(value):
            if text.startswith(_CONFIG_SYNTAX):
                raise ValueError(
                    f"--{option.replace('_', '-')} {text!r}: a value may not start with $, @ or % "
                    "(bundle config syntax); rename the file or folder"
                )
    parser = ConfigParser()
    parser.read_config(str(bundle_template_dir() / "configs" / name))
    parser.update(dict(overrides))
    try:
        return parser.get_parsed_content(key)
    except RuntimeError as error:
        raise _original(error) from None


def _original(error: RuntimeError) -> BaseException:
    """The error a component raised, out of MONAI's "Failed to instantiate component" wrappers (each a
    ``RuntimeError`` raised from the one below it), so the command line reports it as one line (a
    ValueError naming the file, not a parser trace)."""
    cause: BaseException = error
    while isinstance(cause, RuntimeError) and cause.__cause__ is not None:
        cause = cause.__cause__
    return cause


def train_to(config: TrainConfig, model_path: str | os.PathLike | None = None) -> TrainResult:
    """:func:`~attnunet.pipelines.engines.training.train`, then the best checkpoint copied to
    ``model_path`` (a bundle's ``models/model.pt``) when one is given, on rank 0 only."""
    if model_path is not None and (config.folds or config.fold is not None):
        raise ValueError(
            "a bundle's models/model.pt holds one model, and cross-validation trains one per fold: run it "
            "with 'attnunet train --folds' (or set model_path to null) and ensemble the folds with "
            "'attnunet infer --model OUTPUT'"
        )
    check_writable_folder(config.output)  # before the data is checked and cached, not at the first epoch
    result = train(config)
    if model_path is not None and int(os.environ.get("RANK", "0")) == 0:
        Path(model_path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(model_path) as tmp:
            shutil.copyfile(result.best_checkpoint, tmp)
    return result
