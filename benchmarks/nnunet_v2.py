"""nnU-Net v2 itself (its planner, preprocessing, data loader, augmentation, trainer and predictor) beside
``attnunet train --time-budget M`` on the same training cases, both scored on the same held-out cases.

nnU-Net runs as its users run it, through its own commands, with a fixed-epoch trainer of its own
(``nnUNetTrainer_5epochs`` ...: 250 iterations an epoch, its poly schedule over those epochs)::

    nnUNetv2_plan_and_preprocess -d ID -c CONFIGURATION
    nnUNetv2_train ID CONFIGURATION 0 -tr TRAINER -device DEVICE
    nnUNetv2_predict -i TEST -o PRED -d ID -c CONFIGURATION -f 0 -tr TRAINER -device DEVICE

(fold 0 of its own five: 80% of the training cases, as ``attnunet train`` trains on 80% and validates on
20%). attnunet then gets the minutes nnU-Net took from raw data to its trained model (preprocessing,
training and its final validation), unless ``--attnunet-minutes`` says otherwise::

    attnunet train --data TRAIN --output OUT/attnunet --time-budget MINUTES --no-track
    attnunet infer TEST --model OUT/attnunet/checkpoints/best.pt --output OUT/attnunet_pred

Both predictions are scored by ``attnunet evaluate`` (Dice, HD95, surface Dice per class). The rows go to
``OUT/results.json``: minutes to a trained model, minutes to predict the held-out cases, Dice per class.

Run (nnU-Net v2 from PyPI: ``pip install nnunetv2``; its torch is yours)::

    python benchmarks/nnunet_v2.py --train hipp/train --test-images hipp/test/imagesTr \\
        --test-labels hipp/test/labelsTr --output nn_vs_attnunet --trainer nnUNetTrainer_5epochs

Run it alone on the machine: both sides are timed by the wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from attnunet.pipelines.data.datasets import discover_dataset
from attnunet.pipelines.inference.inputs import discover_inputs

NIFTI = ".nii.gz"  # nnU-Net's file_ending for the raw dataset written here


def _command(name: str) -> str:
    """A console script beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    if (found := shutil.which(name)) is None:
        raise SystemExit(f"{name} not found: install nnU-Net v2 (pip install nnunetv2) into this environment")
    return found


def _link(source: str | os.PathLike, target: Path) -> None:
    if not str(source).endswith(NIFTI):
        raise SystemExit(f"{source}: the benchmark hands nnU-Net {NIFTI} files only")
    target.symlink_to(Path(source).resolve())


def write_raw_dataset(train: Path, raw: Path, dataset_id: int) -> Path:
    """nnU-Net v2's raw layout for ``train`` (an MSD or nnU-Net dataset): links ``imagesTr/CASE_XXXX``,
    ``labelsTr/CASE`` and a v2 ``dataset.json``; nothing is copied. Returns the dataset folder."""
    index = discover_dataset(train)
    folder = raw / f"Dataset{dataset_id:03d}_Benchmark"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for number, item in enumerate(index.items):
        case = f"case_{number:04d}"
        channels = [item["image"]] if isinstance(item["image"], str) else list(item["image"])
        for channel, path in enumerate(channels):
            _link(path, folder / "imagesTr" / f"{case}_{channel:04d}{NIFTI}")
        _link(item["label"], folder / "labelsTr" / f"{case}{NIFTI}")
    names = index.modality.split("+") if index.modality else ["MR"] * len(channels)
    description = {
        "channel_names": {str(i): name for i, name in enumerate(names)},
        "labels": {name: int(value) for value, name in index.labels.items()},
        "numTraining": len(index.items),
        "file_ending": NIFTI,
    }
    (folder / "dataset.json").write_text(json.dumps(description, indent=1))
    return folder


def write_test_inputs(test_images: Path, folder: Path, channels: int) -> list[str]:
    """The held-out scans as nnU-Net's ``CASE_0000`` (, ``_0001`` ...) links, named as their labels."""
    folder.mkdir(parents=True)
    cases = discover_inputs(test_images, channels=channels)
    for case in cases:
        files = [case.image] if isinstance(case.image, str) else list(case.image)
        for channel, path in enumerate(files):
            _link(path, folder / f"{case.name}_{channel:04d}{NIFTI}")
    return [case.name for case in cases]


def timed(step: str, command: list[str], times: dict, env: dict | None = None) -> None:
    """Run ``command`` (its output passes through), its wall-clock minutes in ``times[step]``."""
    print(f"[{time.strftime('%H:%M:%S')}] {step}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    times[step] = round((time.perf_counter() - start) / 60, 2)


def run_nnunet(args: argparse.Namespace, out: Path, env: dict) -> dict[str, float]:
    """nnU-Net's three commands on the raw dataset and test inputs under ``out``; their minutes."""
    minutes: dict[str, float] = {}
    dataset, configuration = str(args.dataset_id), args.configuration
    trainer = ["-tr", args.trainer, "-device", args.device]
    timed(
        "preprocess",
        [_command("nnUNetv2_plan_and_preprocess"), "-d", dataset, "-c", configuration],
        minutes,
        env,
    )
    timed("train", [_command("nnUNetv2_train"), dataset, configuration, "0", *trainer], minutes, env)
    inputs = ["-i", str(out / "nnunet_test_input"), "-o", str(out / "nnunet_pred")]
    predict = [_command("nnUNetv2_predict"), *inputs, "-d", dataset, "-c", configuration, "-f", "0", *trainer]
    timed("predict", predict, minutes, env)
    return minutes


def run_attnunet(args: argparse.Namespace, out: Path, budget: float) -> dict[str, float]:
    """``attnunet train --time-budget`` on the training dataset, then ``infer`` on the held-out scans."""
    minutes: dict[str, float] = {}
    model = out / "attnunet"
    train = ["train", "--data", str(args.train), "--output", str(model), "--time-budget", f"{budget:.2f}"]
    options = ["--no-track", "--no-progress", "--device", args.device, *args.attnunet_options.split()]
    timed("train", [_command("attnunet"), *train, *options], minutes)
    best = str(model / "checkpoints" / "best.pt")
    infer = ["infer", str(args.test_images), "--model", best, "--output", str(out / "attnunet_pred")]
    timed("predict", [_command("attnunet"), *infer, "--no-progress"], minutes)
    return minutes


def score(tool: str, predictions: Path, minutes: dict, to_model: float, args: argparse.Namespace) -> dict:
    """``attnunet evaluate`` of one tool's predictions; its row (printed as a JSON line)."""
    evaluation = predictions.with_name(f"{predictions.name}_eval")
    evaluate = ["evaluate", "--predictions", str(predictions), "--labels", str(args.test_labels)]
    subprocess.run(
        [_command("attnunet"), *evaluate, "--output", str(evaluation), "--no-progress"], check=True
    )
    row = {"tool": tool, "minutes_to_model": round(to_model, 2), "minutes": minutes}
    row["dice"] = dice_per_class(evaluation)
    print(json.dumps(row), flush=True)
    return row


def dice_per_class(evaluation: Path) -> dict[str, float]:
    """Mean Dice per class from ``attnunet evaluate``'s ``summary.json``."""
    summary = json.loads((evaluation / "summary.json").read_text())
    return {name: round(row["dice"]["mean"], 4) for name, row in summary["classes"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True, help="training dataset (MSD or nnU-Net layout)")
    parser.add_argument("--test-images", type=Path, required=True, help="held-out scans (a folder)")
    parser.add_argument("--test-labels", type=Path, required=True, help="their labels (<case>.nii.gz)")
    parser.add_argument("--output", type=Path, required=True, help="a new folder for everything written")
    parser.add_argument(
        "--trainer", default="nnUNetTrainer_5epochs", help="nnU-Net trainer (default: %(default)s)"
    )
    parser.add_argument(
        "--configuration", default="3d_fullres", help="nnU-Net configuration (default: %(default)s)"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="both tools' device")
    parser.add_argument(
        "--dataset-id", type=int, default=990, help="nnU-Net dataset id (default: %(default)s)"
    )
    parser.add_argument(
        "--attnunet-minutes",
        type=float,
        help="attnunet's time budget (default: nnU-Net's minutes to its model)",
    )
    parser.add_argument("--attnunet-options", default="", help="more 'attnunet train' options, one string")
    args = parser.parse_args()
    if args.output.exists():
        raise SystemExit(f"{args.output} exists; give a new folder (nothing is overwritten)")
    out = args.output.resolve()
    env = {
        **os.environ,
        **{name: str(out / name) for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")},
    }
    dataset = write_raw_dataset(args.train, out / "nnUNet_raw", args.dataset_id)
    channels = len(json.loads((dataset / "dataset.json").read_text())["channel_names"])
    write_test_inputs(args.test_images, out / "nnunet_test_input", channels)

    nnunet = run_nnunet(args, out, env)
    to_model = nnunet["preprocess"] + nnunet["train"]
    ours = run_attnunet(args, out, args.attnunet_minutes or to_model)
    rows = [
        score(f"nnU-Net v2 {args.configuration} {args.trainer}", out / "nnunet_pred", nnunet, to_model, args),
        score("attnunet train --time-budget", out / "attnunet_pred", ours, ours["train"], args),
    ]
    (out / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
