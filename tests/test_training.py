"""Training: options, bad input, determinism, the memory-budget cache fallback and the binary (BCE) path.

Tiny settings throughout (conftest's ``tiny_config``: 32 x 32 x 16 volumes, 4 features, 1 epoch, no
MLflow unless a test needs it); the MLflow side is tested against a real server in test_tracking.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from mlflow_server import free_port

from attnunet.checkpoints import load_checkpoint, model_from_checkpoint
from attnunet.cli import main
from attnunet.pipelines.engines import TrainConfig, train
from attnunet.pipelines.engines.handlers import further_epochs
from attnunet.pipelines.engines.training import BUDGET_EPOCH_STEPS
from attnunet.pipelines.planning.plan import load_plan

ILL_CASES = [
    ({"epochs": 0}, "epochs"),
    ({"val_every": 0}, "val_every"),
    ({"roi_size": (32,)}, "roi_size"),
    ({"roi_size": (32, 32, 0)}, "roi_size"),
    ({"pixdim": (1.0, 1.0)}, "pixdim"),
    ({"lr": 0.0}, "lr"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"overlap": 1.0}, "overlap"),
    ({"out_channels": 0}, "out_channels"),
    ({"num_workers": -1}, "num_workers"),
    ({"preset": "petct"}, "petct"),
    ({"cache": "ram"}, "ram"),
    ({"scheduler": "step"}, "step"),
    ({"time_budget": 0}, "time_budget must be > 0"),
    ({"time_budget": 5, "resume": True}, "time_budget cannot be combined with resume"),
]


@pytest.mark.parametrize("overrides, named", ILL_CASES)
def test_config_rejects_bad_options(overrides, named):
    with pytest.raises(ValueError, match=named):
        TrainConfig(data="d", output="o", **overrides)


def test_config_defaults_follow_the_document():
    config = TrainConfig(data="d", output="o")
    assert (config.lr, config.network, config.cache, config.amp) == (
        1e-3,
        "attention_unet_3d_small",
        "auto",
        True,
    )


def test_two_cpu_runs_give_the_same_losses_and_the_disk_cache_fallback(demo_dataset, tmp_path, tiny_config):
    first = train(tiny_config(demo_dataset, tmp_path / "a", cache="memory"))
    # A memory budget far below the data makes "auto" fall back to the persistent disk cache.
    second = train(tiny_config(demo_dataset, tmp_path / "b", cache="auto", cache_memory_gb=1e-9))
    assert first.history[0]["train_loss"] == second.history[0]["train_loss"]
    assert first.history[0]["val_loss"] == second.history[0]["val_loss"]
    assert list((tmp_path / "b" / "cache" / "train").glob("*.pt")), "auto cache did not fall back to disk"
    assert not (tmp_path / "a" / "cache" / "train").exists() or not any(
        (tmp_path / "a" / "cache" / "train").iterdir()
    )

    # The history holds the per-epoch metrics, per class by name.
    record = first.history[0]
    assert {"train_loss", "lr", "throughput_samples_per_s", "val_loss", "val_mean_dice"} <= set(record)
    assert 0.0 <= record["data_wait_share"] < 1.0  # the epoch's share spent waiting for the loader
    assert {"val_dice_organ", "val_dice_lesion"} <= set(record)
    assert record["val_mean_dice"] == pytest.approx(
        (record["val_dice_organ"] + record["val_dice_lesion"]) / 2
    )

    # Checkpoints follow the contract and rebuild their own network.
    last = load_checkpoint(first.last_checkpoint)
    assert last["epoch"] == 1 and {"optimizer", "scheduler", "scaler", "best_metric", "spec"} <= set(last)
    assert "optimizer" not in load_checkpoint(first.best_checkpoint)  # best.pt: no resume-only state
    model, spec = model_from_checkpoint(first.best_checkpoint)
    assert spec.labels == {"0": "background", "1": "organ", "2": "lesion"} and spec.preset == "ct"
    assert (spec.in_channels, spec.out_channels, spec.spatial_dims) == (1, 3, 3)
    assert spec.roi_size == tuple(first.config["roi_size"]) and spec.network == first.config["network"]
    assert model(torch.zeros(1, 1, 24, 20, 12)).shape == (1, 3, 24, 20, 12)
    assert json.loads((tmp_path / "a" / "config.json").read_text()) == last["config"]
    # every epoch's record is kept beside the checkpoints, tracked or not
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert records == first.history


def _binary_copy(source: Path, target: Path) -> Path:
    """The demo dataset with organ and lesion merged into one foreground class."""
    shutil.copytree(source, target)
    description = json.loads((target / "dataset.json").read_text())
    description["labels"] = {"0": "background", "1": "organ"}
    (target / "dataset.json").write_text(json.dumps(description))
    for path in (target / "labelsTr").glob("*.nii.gz"):
        image = nib.load(path)
        nib.save(nib.Nifti1Image((np.asarray(image.dataobj) > 0).astype(np.uint8), image.affine), path)
    return target


def test_single_binary_output_trains_with_bce(demo_dataset, tmp_path, tiny_config):
    data = _binary_copy(demo_dataset, tmp_path / "binary")
    result = train(tiny_config(data, tmp_path / "run", out_channels=1))
    assert result.config["out_channels"] == 1
    assert set(result.history[0]) >= {"val_dice_organ", "val_loss"}
    model, _ = model_from_checkpoint(result.best_checkpoint)
    assert model(torch.zeros(2, 1, 32, 32, 16)).shape == (2, 1, 32, 32, 16)


def test_bad_channel_count_for_the_classes(demo_dataset, tmp_path, tiny_config):
    with pytest.raises(ValueError, match="exactly 2 classes"):
        train(tiny_config(demo_dataset, tmp_path / "run", out_channels=1))
    with pytest.raises(ValueError, match="number of classes"):
        train(tiny_config(demo_dataset, tmp_path / "run", out_channels=2))


def test_unreachable_tracking_server_stops_before_training(demo_dataset, tmp_path, tiny_config):
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionError, match="not reachable"):
        train(tiny_config(demo_dataset, tmp_path / "run", track=True, tracking_uri=uri))
    assert not (tmp_path / "run").exists()


def _cli(*args: str) -> list[str]:
    return ["train", "--no-progress", "--device", "cpu", *args]


def test_cli_reports_bad_input_in_one_line(demo_dataset, tmp_path, capsys):
    assert main(_cli("--data", str(tmp_path / "missing"), "--output", str(tmp_path / "o"))) == 2
    assert "missing does not exist" in capsys.readouterr().err

    assert main(_cli("--data", str(demo_dataset), "--output", str(tmp_path / "o"), "--resume")) == 2
    assert "last.pt does not exist" in capsys.readouterr().err

    (tmp_path / "used" / "checkpoints").mkdir(parents=True)
    (tmp_path / "used" / "checkpoints" / "last.pt").write_bytes(b"earlier run")
    assert main(_cli("--data", str(demo_dataset), "--output", str(tmp_path / "used"))) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert (tmp_path / "used" / "checkpoints" / "last.pt").read_bytes() == b"earlier run"

    # a run that never finished an epoch (or someone's files): config.json or metrics.jsonl, no checkpoint
    for name in ("config.json", "metrics.jsonl"):
        folder = tmp_path / f"unfinished-{name}"
        folder.mkdir()
        (folder / name).write_text("{}")
        assert main(_cli("--data", str(demo_dataset), "--output", str(folder), "--no-track")) == 2
        assert capsys.readouterr().err == (
            f"attnunet train: error: {folder / name} already exists and would be overwritten; "
            "choose another --output or move that file away\n"
        )
        assert os.listdir(folder) == [name] and (folder / name).read_text() == "{}"

    assert (
        main(_cli("--data", str(demo_dataset), "--output", str(tmp_path / "o"), "--network-option", "x")) == 2
    )
    assert "KEY=VALUE" in capsys.readouterr().err

    bad = tmp_path / "bad"
    shutil.copytree(demo_dataset, bad)
    (bad / "labelsTr" / "demo_000.nii.gz").write_bytes(b"not a nifti")
    assert main(_cli("--data", str(bad), "--output", str(tmp_path / "o2"), "--no-track")) == 2
    assert "demo_000.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_cli_trains_with_the_options_given(demo_dataset, tmp_path, capsys):
    args = _cli(
        "--data", str(demo_dataset), "--output", str(tmp_path / "o"), "--no-track",
        "--roi-size", "32", "32", "16", "--pixdim", "3", "3", "6", "--epochs", "1", "--batch-size", "2",
        "--num-samples", "1", "--val-fraction", "0.5", "--network-option", "init_features=4",
        "--network-option", "depth=3", "--preset-option", "a_min=-200", "--scheduler", "constant",
        "--lr", "0.002", "--plan", "none",
    )  # fmt: skip
    assert main(args) == 0
    assert "best mean Dice" in capsys.readouterr().out
    config = load_checkpoint(tmp_path / "o" / "checkpoints" / "last.pt")["config"]
    assert config["preset_kwargs"] == {"a_min": -200}
    assert config["network_kwargs"] == {"init_features": 4, "depth": 3}
    assert (config["pixdim"], config["lr"], config["scheduler"]) == ([3.0, 3.0, 6.0], 0.002, "constant")


def test_cli_with_only_data_and_output_trains_from_a_plan_saved_beside_the_run(demo_dataset, tmp_path):
    output = tmp_path / "planned"
    args = _cli("--data", str(demo_dataset), "--output", str(output), "--no-track", "--epochs", "1")
    assert main(args) == 0
    plan = load_plan(output / "plan.json")
    config = load_checkpoint(output / "checkpoints" / "last.pt")["config"]
    assert config["applied_plan"] == plan and plan["dataset"] == str(demo_dataset)
    for field in ("preset", "roi_size", "pixdim", "batch_size", "num_samples", "sw_batch_size", "overlap"):
        assert config[field] == plan[field], field
    assert config["network_kwargs"] == plan["network_kwargs"]
    # an option given on the command line wins over the plan, key by key for the network's options
    args = _cli(
        "--data", str(demo_dataset), "--output", str(tmp_path / "mixed"), "--no-track", "--epochs", "1",
        "--plan", str(output / "plan.json"), "--overlap", "0.1", "--network-option", "init_features=4",
    )  # fmt: skip
    assert main(args) == 0
    mixed = load_checkpoint(tmp_path / "mixed" / "checkpoints" / "last.pt")["config"]
    assert mixed["overlap"] == 0.1 and mixed["roi_size"] == plan["roi_size"]
    assert mixed["network_kwargs"] == {**plan["network_kwargs"], "init_features": 4}


def test_cli_refuses_a_plan_that_is_not_one(demo_dataset, tmp_path, capsys):
    (tmp_path / "plan.json").write_text("[]")
    args = _cli(
        "--data", str(demo_dataset), "--output", str(tmp_path / "o"), "--plan", str(tmp_path / "plan.json")
    )
    assert main(args) == 2
    assert "is not an attnunet plan" in capsys.readouterr().err


@pytest.mark.parametrize(
    "spent, epoch_seconds, validation_seconds, val_every, expected",
    [
        (70, [50], 10, 1, 8),  # (600 - 70 - 2 * 10 - 30) // 60
        (70, [50], 10, 5, 9),  # (600 - 70 - 2 * 10 - 30) // (50 + 10 / 5)
        (590, [50], 10, 1, 0),  # the budget is spent: no further epoch
        (0, [0.0], 0.0, 1, int(570 / 1e-6)),
        (190, [50, 50, 150], 10, 1, 6),  # one slow epoch: (600 - 190 - 50) // 60, not // 160
        (290, [50, 150, 150], 10, 1, 1),  # slower for good: (600 - 290 - 50) // 160
        (290, [150, 150, 50, 50], 10, 1, 4),  # only the last three count: (600 - 290 - 50) // 60
    ],
)
def test_further_epochs(spent, epoch_seconds, validation_seconds, val_every, expected):
    assert further_epochs(600, spent, epoch_seconds, validation_seconds, val_every) == expected


def test_time_budget_chooses_the_epochs_and_anneals_to_the_last(demo_dataset, tmp_path, tiny_config):
    result = train(tiny_config(demo_dataset, tmp_path / "budget", epochs=1000, val_every=3, time_budget=0.25))
    choice = result.config["time_budget_choice"]
    assert 1 <= result.epochs == choice["epochs"] == result.config["epochs"] < 1000
    assert choice["first_epoch_seconds"] > 0 and choice["validation_seconds"] > 0
    # 2 training cases, a batch of 2: one step a pass, so 50 passes make an epoch (not 1 step)
    assert choice["epoch_steps"] == BUDGET_EPOCH_STEPS == 50
    assert load_checkpoint(result.last_checkpoint)["scheduler"]["T_max"] == result.epochs
    rates = [record["lr"] for record in result.history]
    # Never raised, and annealed to 0 at the epoch chosen last (how fast depends on when the budget knew it).
    assert rates == sorted(rates, reverse=True)
    assert load_checkpoint(result.last_checkpoint)["scheduler"]["_last_lr"] == [pytest.approx(0.0, abs=1e-12)]
    assert "val_mean_dice" in result.history[0] and "val_mean_dice" in result.history[-1]  # first and last
    assert json.loads((tmp_path / "budget" / "config.json").read_text())["time_budget_choice"] == choice


@pytest.mark.parametrize("plan", [["--plan", "none"], []], ids=["no-plan", "planned"])
def test_label_values_with_a_gap_are_refused_before_anything_is_written(demo_dataset, tmp_path, capsys, plan):
    """BraTS-style labels {0, 1, 4}, with or without a plan: one line naming the values and the
    renumbering, and a rerun with the same output folder is not blocked by anything the refused run left."""
    pairs = tmp_path / "pairs"
    (pairs / "images").mkdir(parents=True)
    (pairs / "labels").mkdir()
    for image in sorted((demo_dataset / "imagesTr").glob("*.nii.gz"))[:3]:
        shutil.copy(image, pairs / "images" / image.name)
        label = nib.load(demo_dataset / "labelsTr" / image.name)
        values = np.asarray(label.dataobj).astype(np.uint8)
        values[values == 2] = 4
        nib.save(nib.Nifti1Image(values, label.affine), pairs / "labels" / image.name)
    args = _cli("--data", str(pairs), "--output", str(tmp_path / "run"), *plan, "--epochs", "1")
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "label values are [0, 1, 4], not 0..2" in error and "(4 -> 2)" in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_run_stopped_before_its_first_checkpoint_reruns_with_the_same_command(
    demo_dataset, tmp_path, tiny_config
):
    config = tiny_config(demo_dataset, tmp_path / "run")
    train(config)
    # What a run killed between its first record and its first checkpoint leaves: config.json and metrics.
    shutil.rmtree(tmp_path / "run" / "checkpoints")
    result = train(config)
    assert result.epochs == 1 and result.last_checkpoint.is_file()
    assert [
        r["epoch"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    ] == [1]
    # Someone else's config.json (not written for this folder) is still never overwritten.
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"output": str(tmp_path / "elsewhere")}))
    with pytest.raises(FileExistsError, match="config.json already exists"):
        train(tiny_config(demo_dataset, other))


def test_resume_with_more_epochs_and_a_new_lr_rebuilds_the_schedule_and_records_the_change(
    demo_dataset, tmp_path, tiny_config, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # MLflow puts a sqlite store's artifacts under ./mlruns
    tracked = {"track": True, "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "resume"}
    first = train(tiny_config(demo_dataset, tmp_path / "run", epochs=2, **tracked))
    result = train(tiny_config(demo_dataset, tmp_path / "run", epochs=5, lr=0.01, resume=True, **tracked))
    rates = [record["lr"] for record in result.history]
    assert [record["epoch"] for record in result.history] == [3, 4, 5]
    # The cosine of 0.01 over 5 epochs from epoch 3 on, not the old 2-epoch one climbing back from 0.
    assert rates == pytest.approx([0.01 * (1 + math.cos(math.pi * e / 5)) / 2 for e in (2, 3, 4)])
    assert rates == sorted(rates, reverse=True) and rates[-1] < 0.1 * 0.01
    scheduler = load_checkpoint(result.last_checkpoint)["scheduler"]
    assert scheduler["T_max"] == 5 and scheduler["_last_lr"] == [pytest.approx(0.0, abs=1e-12)]
    assert result.config["resumed"] == {"2": {"epochs": 5, "lr": 0.01}}
    # MLflow keeps the run's first parameters; the changes have their own keys.
    params = MlflowClient(tracked["tracking_uri"]).get_run(first.run_id).data.params
    assert (params["lr"], params["epochs"]) == ("0.001", "2")
    assert (params["resumed.2.lr"], params["resumed.2.epochs"]) == ("0.01", "5")
    # A change of the validation cases is refused, the checkpoint left as it was.
    with pytest.raises(ValueError, match=r"^--resume: the run was trained with --seed 0, .* --seed 0 or"):
        train(tiny_config(demo_dataset, tmp_path / "run", epochs=6, seed=1, resume=True))
    assert load_checkpoint(result.last_checkpoint)["epoch"] == 5


def test_a_time_budget_shorter_than_an_epoch_ends_it_early_with_a_checkpoint(
    demo_dataset, tmp_path, tiny_config, caplog
):
    budget_minutes = 0.05
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="attnunet.pipelines.engines.handlers"):
        result = train(
            tiny_config(demo_dataset, tmp_path / "budget", epochs=1000, time_budget=budget_minutes)
        )
    seconds = time.perf_counter() - started
    assert seconds < 10 * 60 * budget_minutes + 30, seconds  # not BUDGET_EPOCH_STEPS steps of many seconds
    assert result.epochs == 1 and load_checkpoint(result.last_checkpoint)["epoch"] == 1
    assert "val_mean_dice" in result.history[-1] and result.best_checkpoint.is_file()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "time budget 0.05 min spent in epoch 1 after" in warning and "larger --time-budget" in warning
