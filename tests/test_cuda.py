"""CUDA paths of inference; skipped without a GPU. Imports neither MLflow nor SimpleITK and needs no
conftest fixture, so ``benchmarks/gpu_check.sh`` runs it on a device with only the carried wheels."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from attnunet.checkpoints import save_checkpoint
from attnunet.networks import create_network
from attnunet.pipelines.inference.predict import infer
from attnunet.spec import ModelSpec

CUDA = torch.cuda.is_available()
TINY = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "init_features": 4, "depth": 2}
CONFIG = {
    "preset": "ct",
    "pixdim": [1.5, 1.5, 2.0],
    "roi_size": [16, 16, 16],
    "labels": {"0": "background", "1": "one", "2": "two"},
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "preset_kwargs": {"a_min": 0.0, "a_max": 1000.0},
}


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_windows_with_cpu_stitching_match_gpu_stitching(tmp_path):
    torch.manual_seed(0)
    model = create_network("attention_unet", **TINY)
    spec = ModelSpec.from_config({**CONFIG, "network_spec": {"name": "attention_unet", "kwargs": TINY}})
    checkpoint = save_checkpoint(tmp_path / "model.pt", {"spec": spec.to_dict(), "model": model.state_dict()})
    volume = np.random.default_rng(6).uniform(0, 1000, size=(23, 19, 13)).astype(np.float32)
    affine = np.diag([-0.8, -1.1, 2.5, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "scan.nii.gz"))
    options = {"model": checkpoint, "probabilities": True, "progress": False, "sw_device": "cuda"}
    infer(tmp_path / "scan.nii.gz", tmp_path / "gpu", device="cuda", **options)
    infer(tmp_path / "scan.nii.gz", tmp_path / "cpu", device="cpu", **options)
    gpu = np.asarray(nib.load(tmp_path / "gpu" / "probabilities" / "scan.nii.gz").dataobj)
    cpu = np.asarray(nib.load(tmp_path / "cpu" / "probabilities" / "scan.nii.gz").dataobj)
    assert gpu.shape[:3] == volume.shape and np.allclose(gpu, cpu, atol=1e-3)
