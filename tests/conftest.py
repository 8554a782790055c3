"""Shared pytest fixtures.

``demo_dataset``: a small demo dataset in MSD layout (4 training + 2 test cases of 32 x 32 x 16 voxels
at 3 x 3 x 6 mm, the same field of view as the full demo), written once per test session.
``write_dicom_series``: writes a SimpleITK volume as a multi-slice DICOM series (shuffled file names).
``tiny_config``: ``tiny_config(data, output, **overrides)``, a :class:`TrainConfig` of a tiny CPU run.
``tiny_checkpoint``: a checkpoint of a tiny AttentionUNet (random weights, depth 2: a multiple of 4),
CT preset at each image's own spacing, 16^3 windows, 3 classes.
``shared_data``: the real datasets' folder ``../shared/data`` (outside the repository); skips when absent.
Plain functions for the same, importable by test modules (``from conftest import ...``):
:func:`shared_dataset` (a dataset folder, or a skip naming it) and :func:`needs_shared` (a ``skipif`` mark,
for use at import time).
"""

from __future__ import annotations

import locale
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import SimpleITK as sitk
import torch

from attnunet.pipelines.demo.data import write_demo_dataset

# Under pytest-xdist (README's `-n auto`) each worker takes its share of the cores, for its own torch
# and for the processes its tests start (OMP_NUM_THREADS): workers that each used every core would
# oversubscribe the machine and run slower together than one after the other.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _threads = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


def pytest_configure(config: pytest.Config) -> None:
    """xdist hands out one test at a time (``--maxschedchunk=1``): the long ones, first in the order (see
    below), spread over the workers instead of all going to the first worker's initial chunk. Set here, not
    in pyproject's ``addopts``, where it would be an unknown option with xdist off (``-p no:xdist``)."""
    if hasattr(config.option, "maxschedchunk") and config.option.maxschedchunk is None:
        config.option.maxschedchunk = 1


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests marked ``long`` first, longest first: spread over xdist's workers from the start, none of
    them is left to run alone at the end of the suite."""

    def minutes(item: pytest.Item) -> float:
        marker = item.get_closest_marker("long")
        return 0.0 if marker is None else float(marker.kwargs.get("minutes", 1))

    items.sort(key=lambda item: -minutes(item))  # stable: otherwise as collected


# Real datasets, never copied into the repository: the tests that read them skip where they are absent.
SHARED_DATA = Path(__file__).parents[2] / "shared" / "data"


def _absent(path: Path) -> str:
    return f"real data {path} is absent (../shared/data lives outside the repository)"


def shared_dataset(*parts: str) -> Path:
    """``../shared/data/<parts>`` (a dataset or series folder); skips the calling test, naming the
    folder, when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_dir():
        pytest.skip(_absent(path))
    return path


def needs_shared(*parts: str) -> pytest.MarkDecorator:
    """A ``skipif`` mark for a test that reads ``../shared/data/<parts>``, naming the folder when absent."""
    path = SHARED_DATA.joinpath(*parts)
    return pytest.mark.skipif(not path.is_dir(), reason=_absent(path))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``, the folder of real datasets; skips the test when it is absent."""
    return shared_dataset()


if TYPE_CHECKING:  # imported by the fixture itself: the engines pull in MLflow, which most tests never use
    from attnunet.pipelines.engines import TrainConfig

# A run of seconds on a CPU: 32 x 32 x 16 patches, 4 features, 1 epoch, no MLflow unless a test asks.
TINY = {
    "roi_size": (32, 32, 16),
    "network_kwargs": {"init_features": 4, "depth": 3},
    "epochs": 1,
    "batch_size": 2,
    "num_samples": 1,
    "val_fraction": 0.5,
    "sw_batch_size": 2,
    "track": False,
    "progress": False,
    "device": "cpu",
}


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a small demo dataset (dataset.json, imagesTr/labelsTr, imagesTs/labelsTs); read-only."""
    root = tmp_path_factory.mktemp("demo") / "dataset"
    return write_demo_dataset(
        root, num_cases=4, num_test=2, shape=(32, 32, 16), spacing=(3.0, 3.0, 6.0), seed=0
    )


def _write_dicom_series(
    volume: sitk.Image, folder: Path, uid: str, description: str, shuffle_seed: int = 0
) -> None:
    """Write ``volume`` (int16) as one DICOM file per slice with a scanner's tags, under shuffled names."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = volume.GetDirection()
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[0:7:3], *direction[1:8:3]))
    names = [f"{description}{i:03d}.dcm" for i in range(volume.GetDepth())]
    random.Random(shuffle_seed).shuffle(names)  # file order must not give the slice order
    # GDCM's DICOM writer sets the process's C locale to "C" and leaves it: subprocesses' text output
    # would then be decoded as ASCII in every later test of this worker.
    saved_locale = locale.setlocale(locale.LC_ALL)
    for z in range(volume.GetDepth()):
        plane = volume[:, :, z]
        tags = {
            "0008|0060": "CT",
            "0020|000d": uid.rsplit(".", 1)[0],
            "0020|000e": uid,
            "0008|103e": description,
            "0020|0037": orientation,
            "0020|0032": "\\".join(f"{v:.10f}" for v in volume.TransformIndexToPhysicalPoint((0, 0, z))),
            "0020|0013": str(z + 1),
            "0018|0050": f"{volume.GetSpacing()[2]:.6f}",
            "0028|0030": f"{volume.GetSpacing()[1]:.6f}\\{volume.GetSpacing()[0]:.6f}",
        }
        for key, value in tags.items():
            plane.SetMetaData(key, value)
        writer.SetFileName(str(folder / names[z]))
        writer.Execute(plane)
    locale.setlocale(locale.LC_ALL, saved_locale)


@pytest.fixture(scope="session")
def write_dicom_series():
    """``write(volume, folder, uid, description, shuffle_seed=0)``: a volume as a DICOM series."""
    return _write_dicom_series


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., TrainConfig]:
    """``tiny_config(data, output, **overrides)``: the :data:`TINY` training options with ``overrides``."""

    from attnunet.pipelines.engines import TrainConfig

    def make(data: Path, output: Path, **overrides: object) -> TrainConfig:
        return TrainConfig(data=str(data), output=str(output), **{**TINY, **overrides})

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny AttentionUNet checkpoint (random weights) that segments CT at its own spacing."""
    import torch

    from attnunet.checkpoints import save_checkpoint
    from attnunet.spec import ModelSpec

    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "init_features": 4, "depth": 2}
    config = {
        "preset": "ct",
        "pixdim": None,
        "roi_size": [16, 16, 16],
        "labels": {"0": "background", "1": "organ", "2": "lesion"},
        **{k: kwargs[k] for k in ("spatial_dims", "in_channels", "out_channels")},
        "network_spec": {"name": "attention_unet", "kwargs": kwargs},
    }
    spec = ModelSpec.from_config(config)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-model") / "model.pt"
    return save_checkpoint(
        path, {"spec": spec.to_dict(), "model": spec.build().state_dict(), "config": config}
    )
