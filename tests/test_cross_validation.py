"""Cross-validation: nnU-Net's folds and split files, ``attnunet train --folds/--fold``, ``attnunet cv``, the
parent MLflow run with a child run per fold, a fold that fails, and the post-processing chosen on the
out-of-fold predictions.

Tiny settings (32 x 32 x 16 patches, 4 features, 1 epoch) on conftest's 4-case demo data, a real sqlite
MLflow store in ``tmp_path``, MONAI's real engines.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from attnunet.cli import main
from attnunet.pipelines.data.splits import case_ids, check_splits, kfold_splits
from attnunet.pipelines.engines import TrainConfig
from attnunet.pipelines.engines import training as training_module
from attnunet.pipelines.engines.cv import _share
from attnunet.pipelines.engines.folds import settle_splits
from attnunet.pipelines.evaluation.largest_component import choose_largest_component

DEMO_CASES = ["demo_000", "demo_001", "demo_002", "demo_003"]
TINY_FLAGS = [
    "--no-progress", "--device", "cpu", "--plan", "none", "--roi-size", "32", "32", "16",
    "--network-option", "init_features=4", "--network-option", "depth=3", "--epochs", "1",
    "--batch-size", "2", "--num-samples", "1", "--sw-batch-size", "2",
]  # fmt: skip


def _train(data: Path, output: Path, *args: str) -> list[str]:
    return ["train", "--data", str(data), "--output", str(output), *TINY_FLAGS, *args]


def _tracked(tmp_path: Path) -> list[str]:
    return ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--experiment", "cv"]


# --- folds -----------------------------------------------------------------------------------------------


def test_folds_are_nnunets_reproducible_disjoint_and_covering():
    ids = [f"c{i:02d}" for i in (5, 0, 11, 3, 8, 1, 9, 2, 10, 4, 7, 6)]  # any order: sorted first
    splits = kfold_splits(ids, 5)
    assert splits == kfold_splits(list(reversed(ids)), 5)
    # sklearn's KFold(5, shuffle=True, random_state=12345) over the sorted ids (nnU-Net's split) gives these
    assert [fold["val"] for fold in splits] == [
        ["c00", "c03", "c08"], ["c07", "c10", "c11"], ["c06", "c09"], ["c01", "c04"], ["c02", "c05"],
    ]  # fmt: skip
    vals = [case for fold in splits for case in fold["val"]]
    assert sorted(vals) == sorted(ids) and len(set(vals)) == len(vals)
    for fold in splits:
        assert sorted(fold["train"] + fold["val"]) == sorted(ids) and not set(fold["train"]) & set(
            fold["val"]
        )
    assert check_splits(splits, ids, "x") == splits
    with pytest.raises(ValueError, match="3 cases cannot be split into 5 folds"):
        kfold_splits(ids[:3], 5)


def test_case_ids_are_nnunets():
    items = [
        {
            "image": ["/d/imagesTr/la_003_0000.nii.gz", "/d/imagesTr/la_003_0001.nii.gz"],
            "label": "/d/la_003.nii.gz",
        },
        {"image": "/d/imagesTr/la_004.nii.gz", "label": "/d/labelsTr/la_004.nii.gz"},
    ]
    assert case_ids(items) == ["la_003", "la_004"]
    # one folder per case with the same file names (a BraTS CSV): the labels name the cases, else the folders
    same = [{"image": f"/d/p{i}/flair.nii.gz", "label": f"/d/p{i}/seg.nii.gz"} for i in range(2)]
    assert case_ids(same) == ["p0", "p1"]


BAD_SPLITS = [
    (
        [
            {"train": ["demo_000", "demo_001"], "val": ["demo_002", "demo_009"]},
            {"train": ["demo_002"], "val": ["demo_000", "demo_001", "demo_003"]},
        ],
        "the data does not have: demo_009",
    ),  # noqa: E501
    (
        [
            {"train": ["demo_002", "demo_003"], "val": ["demo_000", "demo_001"]},
            {"train": ["demo_000"], "val": ["demo_001", "demo_002", "demo_003"]},
        ],
        "folds 0 and 1 overlap: both validate on demo_001",
    ),  # noqa: E501
    (
        [
            {"train": ["demo_002", "demo_003"], "val": ["demo_000", "demo_001"]},
            {"train": ["demo_000", "demo_001"], "val": ["demo_002"]},
        ],
        "do not cover the data: no fold validates on demo_003",
    ),  # noqa: E501
    (
        [
            {"train": ["demo_000"], "val": ["demo_000", "demo_001"]},
            {"train": ["demo_000"], "val": ["demo_002", "demo_003"]},
        ],
        "fold 0 trains and validates on demo_000",
    ),  # noqa: E501
    ({"train": [], "val": []}, "expected a list of at least 2 folds"),
]


@pytest.mark.parametrize(("splits", "problem"), BAD_SPLITS)
def test_a_bad_split_file_is_refused_in_one_line_naming_it(demo_dataset, tmp_path, capsys, splits, problem):
    bad = tmp_path / "splits_final.json"
    bad.write_text(json.dumps(splits))
    output = tmp_path / "cv"
    assert main(_train(demo_dataset, output, "--folds", "2", "--splits", str(bad), "--no-track")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"attnunet train: error: {bad}: ") and problem in err and err.count("\n") == 1, err
    assert str(bad) in err and not (output / "fold_0").exists() and not (output / "splits.json").exists()


def test_nnunet_split_file_is_taken_and_kept(tmp_path):
    nnunet = [  # as nnU-Net writes splits_final.json
        {"train": ["demo_001", "demo_003"], "val": ["demo_000", "demo_002"]},
        {"train": ["demo_000", "demo_002"], "val": ["demo_001", "demo_003"]},
    ]
    given = tmp_path / "splits_final.json"
    given.write_text(json.dumps(nnunet, indent=4))
    output = tmp_path / "cv"
    assert settle_splits(output, DEMO_CASES, None, str(given)) == nnunet
    assert json.loads((output / "splits.json").read_text()) == nnunet
    # a later run into the same output (another process's --fold K) reuses it, given the file or not
    assert settle_splits(output, DEMO_CASES, 2, None) == nnunet
    with pytest.raises(ValueError, match="holds 2 folds, not the 3 of --folds"):
        settle_splits(output, DEMO_CASES, 3, None)
    other = tmp_path / "other.json"
    other.write_text(json.dumps(kfold_splits(DEMO_CASES, 2)))
    with pytest.raises(ValueError, match=f"{other}: its folds differ from those"):
        settle_splits(output, DEMO_CASES, None, str(other))
    # without a file: nnU-Net's split of the sorted ids
    assert settle_splits(tmp_path / "made", DEMO_CASES, 2, None) == kfold_splits(DEMO_CASES, 2)


def test_fold_options_are_checked_and_the_budget_is_shared():
    with pytest.raises(ValueError, match="folds must be >= 2"):
        TrainConfig(data="d", output="o", folds=1)
    with pytest.raises(ValueError, match="fold must be >= 0 and below folds"):
        TrainConfig(data="d", output="o", folds=2, fold=2)
    config = TrainConfig(data="d", output="o", folds=5, time_budget=60)
    assert _share(config, time.monotonic(), 5) == pytest.approx(12.0, abs=0.01)  # 12 minutes a fold
    assert _share(config, time.monotonic() - 30 * 60, 2) == pytest.approx(15.0, abs=0.01)  # what is left


# --- post-processing ------------------------------------------------------------------------------------


def _save(path: Path, array: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.eye(4)), str(path))
    return str(path)


def test_largest_component_is_chosen_where_it_helps_and_not_where_it_hurts(tmp_path):
    label = np.zeros((24, 24, 12), np.uint8)
    label[2:8, 2:8, 2:8] = 1  # class 1: one organ
    label[14:20, 14:20, 2:8] = 2  # class 2: two real components (a paired organ)
    label[14:18, 2:6, 2:6] = 2
    prediction = label.copy()
    prediction[0:2, 20:24, 0:2] = 1  # a stray island of class 1
    pairs = [
        (_save(tmp_path / f"p{i}.nii.gz", prediction), _save(tmp_path / f"l{i}.nii.gz", label))
        for i in (0, 1)
    ]
    choice = choose_largest_component(pairs, [1, 2])
    assert choice.classes == [1]  # the island removed: class 1's Dice rises; class 2 would lose a component
    without, with_rule = choice.statistics(False), choice.statistics(True)
    assert with_rule[1]["mean"] == 1.0 > without[1]["mean"]
    assert without[2]["mean"] == 1.0 > with_rule[2]["mean"]


# --- training ---------------------------------------------------------------------------------------------


def _children(client: MlflowClient, parent_id: str) -> list[tuple[str, str]]:
    """(name, status) of the parent's child runs, sorted."""
    parent = client.get_run(parent_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return sorted((run.info.run_name, run.info.status) for run in runs)


def _summary(output: Path) -> list[dict[str, str]]:
    with (output / "cv_summary.csv").open(newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.mark.long(minutes=2)
def test_two_folds_train_summarise_and_track_a_parent_with_two_children(
    demo_dataset, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "cv"
    assert main(_train(demo_dataset, output, "--folds", "2", *_tracked(tmp_path))) == 0
    printed = capsys.readouterr().out
    assert "fold 0: best mean Dice" in printed and "fold 1: best mean Dice" in printed

    splits = json.loads((output / "splits.json").read_text())
    assert splits == kfold_splits(DEMO_CASES, 2)
    for k, fold in enumerate(splits):
        folder = output / f"fold_{k}"
        assert (folder / "checkpoints" / "best.pt").is_file() and (folder / "config.json").is_file()
        config = json.loads((folder / "config.json").read_text())
        assert (config["fold"], config["folds"]) == (k, 2)
        assert sorted(p.name for p in (folder / "validation").glob("*.nii.gz")) == [
            f"{c}.nii.gz" for c in fold["val"]
        ]
        # the fold's val cases are its validation set, with no further split: one record per val case
    rows = _summary(output)
    assert {(r["class"], r["metric"]) for r in rows} == {
        (name, metric)
        for name in ("organ", "lesion")
        for metric in ("dice", "hd95", "surface_dice", "dice_largest_component")
    }
    assert all(r.keys() == {"class", "metric", "mean", "sd", "n"} for r in rows)
    organ_dice = next(r for r in rows if (r["class"], r["metric"]) == ("organ", "dice"))
    assert int(organ_dice["n"]) <= 4
    assert set(json.loads((output / "postprocessing.json").read_text())) == {"largest_component"}

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent_id = json.loads((output / "cv_run.json").read_text())["run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["cv.missing_folds"] == "none"
    assert "cv_dice_organ" in parent.data.metrics and "cv_dice_largest_component_organ" in parent.data.metrics
    assert _children(client, parent_id) == [("cv-fold_0", "FINISHED"), ("cv-fold_1", "FINISHED")]
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"cv_summary.csv", "postprocessing.json", "splits.json", "oof_predictions"} <= artifacts
    assert len(client.list_artifacts(parent_id, "oof_predictions")) == 4  # every case, out of its fold

    # gathering again gives the same table
    assert main(["cv", str(output), "--no-progress"]) == 0
    assert "missing folds" not in capsys.readouterr().out and _summary(output) == rows

    # a fold stopped while segmenting its validation cases is segmented, not trained again; the other is kept
    shutil.rmtree(output / "fold_0" / "validation")
    last = (output / "fold_0" / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert main(_train(demo_dataset, output, "--folds", "2", *_tracked(tmp_path))) == 0
    printed = capsys.readouterr().out
    assert "fold 0: trained before, its validation cases segmented now" in printed
    assert "fold 1: already finished, kept" in printed
    assert (output / "fold_0" / "checkpoints" / "last.pt").stat().st_mtime_ns == last
    assert _summary(output) == rows


@pytest.mark.long(minutes=3)
def test_a_failed_fold_leaves_the_others_and_cv_names_it(demo_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "cv"
    attach = training_module._attach_handlers

    def fail_fold_1(config, *args, **kwargs):  # inside the fold's training, after its MLflow run started
        if Path(config.output).name == "fold_1":
            raise RuntimeError("out of memory in fold 1")
        return attach(config, *args, **kwargs)

    monkeypatch.setattr(training_module, "_attach_handlers", fail_fold_1)
    assert main(_train(demo_dataset, output, "--folds", "2", *_tracked(tmp_path))) == 1
    printed = capsys.readouterr().out
    assert "fold 1: failed: out of memory in fold 1" in printed and "missing folds: 1" in printed
    assert (output / "fold_0" / "checkpoints" / "best.pt").is_file()
    assert not (output / "fold_1" / "checkpoints" / "best.pt").exists()
    val_0 = json.loads((output / "splits.json").read_text())[0]["val"]
    assert {int(r["n"]) for r in _summary(output) if r["metric"] == "dice"} <= {len(val_0)}

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent_id = json.loads((output / "cv_run.json").read_text())["run_id"]
    assert _children(client, parent_id) == [("cv-fold_0", "FINISHED"), ("cv-fold_1", "FAILED")]
    parent = client.get_run(parent_id)
    assert (parent.info.status, parent.data.tags["cv.missing_folds"]) == ("FAILED", "1")

    assert main(["cv", str(output), "--no-progress"]) == 1  # partial: summarised, the missing named
    assert "missing folds: 1" in capsys.readouterr().out

    # the missing fold trained alone (as on another machine) joins the same parent; then cv is complete
    monkeypatch.setattr(training_module, "_attach_handlers", attach)
    assert main(_train(demo_dataset, output, "--fold", "1", *_tracked(tmp_path))) == 0
    assert main(["cv", str(output), "--no-progress"]) == 0
    assert "missing folds" not in capsys.readouterr().out
    parent = client.get_run(parent_id)
    assert (parent.info.status, parent.data.tags["cv.missing_folds"]) == ("FINISHED", "none")
    assert _children(client, parent_id) == [
        ("cv-fold_0", "FINISHED"), ("cv-fold_1", "FAILED"), ("cv-fold_1", "FINISHED"),
    ]  # fmt: skip
    assert (output / "fold_0" / "checkpoints" / "best.pt").is_file()
