"""Sliding-window inference: inputs, model sources, geometry, TTA, components, overwrite (infer)."""

from __future__ import annotations

import json
import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.networks.blocks import Convolution
from scipy import ndimage

from attnunet.checkpoints import save_checkpoint
from attnunet.cli import main
from attnunet.models import load_model
from attnunet.networks import create_network
from attnunet.pipelines.bundle.paths import bundle_template_dir
from attnunet.pipelines.inference.apply import ValidationInferer, Windows, apply_model, window_probabilities
from attnunet.pipelines.inference.inputs import discover_inputs
from attnunet.pipelines.inference.predict import infer
from attnunet.spec import ModelSpec
from attnunet.transforms.readers import SimpleITKReader

THRESHOLD_NET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "kernel_size": 1, "conv_only": True}
CLASSES = {"0": "background", "1": "organ", "2": "lesion"}
TINY = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "init_features": 4, "depth": 2}
CONFIG = {
    "preset": "ct",
    "pixdim": [1.5, 1.5, 2.0],
    "roi_size": [16, 16, 16],
    "labels": CLASSES,
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "preset_kwargs": {"a_min": 0.0, "a_max": 1000.0},
}
# The bundle's 1x1x1 convolution classifies each voxel by its windowed intensity x = HU / 1000:
# logits (0, 10 (x - 0.3), 20 (x - 0.5)) -> class 0 below 0.3, 1 up to 0.7, 2 above.
THRESHOLDS_HU = (300.0, 700.0)


def oblique_affine(
    spacing=(0.8, 1.1, 2.5), angles=(0.35, -0.2, 0.6), origin=(10.0, -20.0, 30.0)
) -> np.ndarray:
    """A rotated, anisotropic affine whose first two axes run right-to-left and front-to-back (LPS-like)."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def save_nifti(path, array, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), affine), str(path))
    return path


def random_volume(shape=(23, 19, 13), seed=0) -> np.ndarray:
    """Random HU values of the three classes, at least 50 HU away from the bundle's thresholds."""
    rng = np.random.default_rng(seed)
    return (rng.choice([100.0, 500.0, 900.0], size=shape) + rng.uniform(-150, 150, size=shape)).astype(
        np.float32
    )


def expected_classes(volume_hu: np.ndarray) -> np.ndarray:
    return np.digitize(volume_hu, THRESHOLDS_HU)


def read(path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine


def _spec(config: dict, kwargs: dict) -> ModelSpec:
    return ModelSpec.from_config({**config, "network_spec": {"name": "attention_unet", "kwargs": kwargs}})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny AttentionUNet checkpoint (random weights) with a CT preset that resamples to 1.5x1.5x2 mm."""
    torch.manual_seed(0)
    model = create_network("attention_unet", **TINY)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    return save_checkpoint(
        path,
        {"spec": _spec(CONFIG, TINY).to_dict(), "model": model.state_dict(), "config": CONFIG},
    )


@pytest.fixture(scope="module")
def threshold_bundle(tmp_path_factory):
    """A MONAI bundle whose network is a 1x1x1 convolution: its segmentation is known voxel by voxel."""
    root = tmp_path_factory.mktemp("bundle") / "threshold"
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    inference = {
        "network_def": {"_target_": "monai.networks.blocks.Convolution", **THRESHOLD_NET},
        **{key: value for key, value in CONFIG.items() if key != "labels"},
        "pixdim": None,
    }
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    metadata = {"network_data_format": {"outputs": {"pred": {"channel_def": CLASSES}}}}
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    net = Convolution(**THRESHOLD_NET)
    with torch.no_grad():
        net.conv.weight.copy_(torch.tensor([0.0, 10.0, 20.0]).view(3, 1, 1, 1, 1))
        net.conv.bias.copy_(torch.tensor([0.0, -3.0, -10.0]))
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


@pytest.mark.parametrize(
    ("network_def", "message"),
    [
        ({"_target_": "$__import__('pathlib').Path('MARKER').touch()"}, "expression"),
        (
            {"_target_": "monai.networks.blocks.Convolution", "spatial_dims": "$open('MARKER', 'w')"},
            "expression",
        ),
        ({"_target_": "os.system", "command": "touch MARKER"}, "not a network class of attnunet"),
        (  # a dotted path that starts allowed and walks through a module's attributes into torch.hub
            {"_target_": "monai.networks.utils.torch.hub.load", "repo_or_dir": ".", "model": "m"},
            "not a network class of attnunet",
        ),
        ({"_target_": "monai.networks.utils.pixelshuffle", "x": 1}, "not a network class of attnunet"),
        ("%configs/train.json#network_def", "expression"),
    ],
)
def test_a_bundle_never_runs_code_from_its_files(
    threshold_bundle, tmp_path, monkeypatch, network_def, message
):
    bundle = tmp_path / "bundle"
    shutil.copytree(threshold_bundle, bundle)
    state = torch.load(bundle / "models" / "model.pt")
    torch.save({"conv.weight": state["conv.weight"]}, bundle / "models" / "model.pt")  # a bare state dict
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    (bundle / "configs" / "inference.json").write_text(json.dumps({**config, "network_def": network_def}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message) as error:
        load_model(bundle)
    assert "python -m monai.bundle run" in str(error.value)
    assert not (tmp_path / "MARKER").exists()


def test_oblique_prediction_has_exactly_the_input_shape_and_affine(checkpoint, tmp_path):
    affine = oblique_affine()
    image = save_nifti(tmp_path / "in" / "scan.nii.gz", random_volume(), affine)
    written = infer(image, tmp_path / "out", model=checkpoint, probabilities=True, progress=False)
    assert written == [tmp_path / "out" / "scan.nii.gz"]
    labels, label_affine = read(written[0])
    assert labels.shape == (23, 19, 13) and labels.dtype == np.uint8
    assert np.allclose(label_affine, affine, atol=1e-5)
    assert set(np.unique(labels)) <= {0, 1, 2}
    probabilities, probability_affine = read(tmp_path / "out" / "probabilities" / "scan.nii.gz")
    assert probabilities.shape == (23, 19, 13, 3)
    assert np.allclose(probability_affine, affine, atol=1e-5)
    assert np.allclose(probabilities.sum(-1), 1.0, atol=1e-4)
    assert np.array_equal(labels, probabilities.argmax(-1))


def test_prediction_is_in_the_input_voxel_grid(threshold_bundle, tmp_path):
    """Orientation is undone voxel for voxel: the known per-voxel rule holds in the input's own grid."""
    volume = random_volume(seed=1)
    image = save_nifti(tmp_path / "scan.nii.gz", volume, oblique_affine())
    plain = infer(image, tmp_path / "plain", model=threshold_bundle, tta=False, progress=False)
    labels, _ = read(plain[0])
    assert np.array_equal(labels, expected_classes(volume))
    # the convolution is flip-equivariant, so flip TTA must give the same segmentation
    flipped = infer(image, tmp_path / "tta", model=threshold_bundle, tta=True, progress=False)
    assert np.array_equal(read(flipped[0])[0], labels)


def test_tta_averages_flips_for_a_real_network(checkpoint, tmp_path):
    image = save_nifti(tmp_path / "scan.nii.gz", random_volume(seed=2), oblique_affine())
    options = {"model": checkpoint, "probabilities": True, "progress": False}
    infer(image, tmp_path / "plain", tta=False, **options)
    infer(image, tmp_path / "tta", **options)  # on by default
    plain = read(tmp_path / "plain" / "probabilities" / "scan.nii.gz")[0]
    averaged = read(tmp_path / "tta" / "probabilities" / "scan.nii.gz")[0]
    assert averaged.shape == plain.shape and np.allclose(averaged.sum(-1), 1.0, atol=1e-4)
    assert not np.allclose(averaged, plain)


def test_tta_mirrors_only_the_axes_the_model_was_trained_mirrored(tmp_path):
    """A model trained unmirrored along an axis (MSD Hippocampus: front to back) is not flipped along it."""
    torch.manual_seed(0)
    model = create_network("attention_unet", **TINY)
    image = save_nifti(tmp_path / "scan.nii.gz", random_volume(seed=3), oblique_affine())
    averaged = {}
    for name, flips in (("none", []), ("left_right", [0]), ("all", [0, 1, 2])):
        config = {**CONFIG, "preset_kwargs": {**CONFIG["preset_kwargs"], "flip_axes": flips}}
        path = save_checkpoint(
            tmp_path / f"{name}.pt",
            {"spec": _spec(config, TINY).to_dict(), "model": model.state_dict(), "config": config},
        )
        options = {"model": path, "probabilities": True, "progress": False}
        infer(image, tmp_path / name / "plain", tta=False, **options)
        infer(image, tmp_path / name / "tta", tta=True, **options)
        averaged[name] = read(tmp_path / name / "tta" / "probabilities" / "scan.nii.gz")[0]
        plain = read(tmp_path / name / "plain" / "probabilities" / "scan.nii.gz")[0]
        # a model trained without mirroring gets no flips, so TTA changes nothing
        assert np.allclose(averaged[name], plain, atol=1e-6) == (name == "none")
    assert not np.allclose(averaged["left_right"], averaged["all"], atol=1e-4)


def test_an_array_with_its_affine_is_segmented_like_its_file(checkpoint, tmp_path):
    """The one apply path: a voxel array with its affine goes through the preset like the file it stands
    for, and gives infer's label map; without its affine it is refused, never run on raw intensities."""
    volume, affine = random_volume(seed=4), oblique_affine()
    written = infer(save_nifti(tmp_path / "scan.nii.gz", volume, affine), tmp_path / "out", model=checkpoint)
    network, spec = load_model(checkpoint)
    labels = apply_model(network, spec, volume, affine=affine).labels
    np.testing.assert_array_equal(labels[0].numpy(), read(written[0])[0])
    np.testing.assert_allclose(labels.affine.numpy(), affine, atol=1e-5)
    with pytest.raises(ValueError, match="a voxel array needs its 4 x 4 affine"):
        apply_model(network, spec, volume)


def test_channel_files_are_one_multichannel_scan(tmp_path):
    """A scan given as a list of channel files (nnU-Net's CASE_0000, CASE_0001) is one 2-channel image."""
    kwargs = {**TINY, "in_channels": 2}
    network = create_network("attention_unet", **kwargs).eval()
    spec = _spec({**CONFIG, "in_channels": 2}, kwargs)
    affine = oblique_affine()
    files = [save_nifti(tmp_path / f"case_000{c}.nii.gz", random_volume(seed=c), affine) for c in (0, 1)]
    result = apply_model(network, spec, [str(path) for path in files])
    assert result.probabilities.shape == (3, 23, 19, 13) and result.labels.shape == (1, 23, 19, 13)
    np.testing.assert_allclose(result.labels.affine.numpy(), affine, atol=1e-5)
    with pytest.raises(ValueError, match="the model takes 2-channel 3D images"):
        apply_model(network, spec, str(files[0]))


def test_validation_scores_the_probabilities_inference_stitches(checkpoint):
    """Validation's inferer is the apply path's windows without flips; its output is their log, which the
    evaluator's loss and argmax take as logits."""
    network, spec = load_model(checkpoint)
    image = torch.rand(1, 1, 20, 24, 12)
    windows = Windows.for_model(spec, tta=False, sw_device="cpu", device="cpu")
    expected = window_probabilities(network, spec, image[0], windows)
    logits = ValidationInferer(spec, Windows.for_model(spec, sw_device="cpu", device="cpu"))(image, network)
    torch.testing.assert_close(torch.softmax(logits, dim=1)[0], expected)


def test_largest_component_keeps_the_biggest_blob(threshold_bundle, tmp_path):
    volume = np.zeros((24, 20, 12), dtype=np.float32)
    volume[2:8, 2:8, 2:8] = 500.0  # organ, 216 voxels
    volume[14:17, 14:17, 6:9] = 500.0  # organ, 27 voxels, not touching
    image = save_nifti(tmp_path / "scan.nii.gz", volume, oblique_affine())
    raw = read(infer(image, tmp_path / "raw", model=threshold_bundle, progress=False)[0])[0]
    kept = read(
        infer(image, tmp_path / "lcc", model=threshold_bundle, largest_component=True, progress=False)[0]
    )[0]
    assert ndimage.label(raw == 1)[1] == 2
    assert ndimage.label(kept == 1)[1] == 1
    big = np.zeros(volume.shape, dtype=bool)
    big[2:8, 2:8, 2:8] = True
    assert np.array_equal(kept == 1, big)


def test_an_empty_border_of_the_scan_is_background(tmp_path):
    """Voxels outside the bounding box of the scan's non-zero voxels (an all-zero slice after the window) are
    never shown to the network, as in training: they are background in the labels and the probabilities."""
    network = Convolution(**THRESHOLD_NET).eval()
    with torch.no_grad():  # logits (0, 5 - 10 x, 20 (x - 0.5)): a windowed 0 alone would be class 1
        network.conv.weight.copy_(torch.tensor([0.0, -10.0, 20.0]).view(3, 1, 1, 1, 1))
        network.conv.bias.copy_(torch.tensor([0.0, 5.0, -10.0]))
    volume = np.full((12, 10, 8), 200.0, dtype=np.float32)  # class 1
    volume[4:8, 4:8, 2:6] = 900.0  # class 2
    volume[..., -1] = -500.0  # an empty slice: 0 after the window
    spec = _spec({**CONFIG, "pixdim": None}, TINY)
    result = apply_model(network, spec, volume, affine=np.eye(4))
    labels, probabilities = result.labels[0].numpy(), result.probabilities.numpy()
    assert (labels[..., -1] == 0).all() and (labels[..., :-1] > 0).all()
    np.testing.assert_allclose(probabilities[0, ..., -1], 1.0)
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)


def test_models_uri_equals_checkpoint(checkpoint, tmp_path):
    from attnunet.pipelines.inference.mlflow_model import log_segmentation_model
    from attnunet.pipelines.tracking.mlflow_runs import RunTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker(uri, experiment="inference-test")
    tracker.log_config(CONFIG)
    model_uri = tracker.log_model(  # as 'attnunet train' does
        checkpoint, log_with=log_segmentation_model, register="tiny", alias="champion"
    )
    tracker.end()
    assert model_uri == "models:/tiny@champion"
    image = save_nifti(tmp_path / "scan.nii.gz", random_volume(seed=3), oblique_affine())
    options = {"probabilities": True, "progress": False}
    infer(image, tmp_path / "from_checkpoint", model=checkpoint, **options)
    infer(image, tmp_path / "from_registry", model=model_uri, tracking_uri=uri, **options)
    for name in ("scan.nii.gz", "probabilities/scan.nii.gz"):
        a, b = (read(tmp_path / folder / name) for folder in ("from_checkpoint", "from_registry"))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_dicom_series_folder_gives_one_case_per_series_in_its_geometry(
    threshold_bundle, tmp_path, write_dicom_series
):
    folder = tmp_path / "patient"
    volume = sitk.GetImageFromArray(np.round(random_volume((9, 14, 12), seed=4)).astype(np.int16))
    volume.SetSpacing((0.9, 1.2, 2.5))
    volume.SetOrigin((-30.0, 12.0, 40.0))
    rotation = oblique_affine(spacing=(1, 1, 1))[:3, :3] @ np.diag([-1.0, -1.0, 1.0])  # a proper rotation
    volume.SetDirection(tuple(rotation.flatten()))
    uids = ("1.2.826.0.1.3680043.2.1125.7.1", "1.2.826.0.1.3680043.2.1125.7.2")
    write_dicom_series(volume, folder, uids[0], "first")
    write_dicom_series(volume, folder, uids[1], "second", shuffle_seed=3)
    assert [case.name for case in discover_inputs(folder)] == [f"patient_{uid}" for uid in uids]
    written = infer(folder, tmp_path / "out", model=threshold_bundle, progress=False)
    reader = SimpleITKReader(series_uid=uids[0])
    array, meta = reader.get_data(reader.read(folder))
    for path in written:
        labels, affine = read(path)
        assert labels.shape == array.shape
        assert np.allclose(affine, meta["affine"], atol=1e-4)
        assert np.array_equal(labels, expected_classes(array))


def test_csv_and_folder_inputs(tmp_path, threshold_bundle):
    for name in ("b", "a"):
        save_nifti(tmp_path / "scans" / f"{name}.nii.gz", random_volume((12, 10, 8)), np.eye(4))
    (tmp_path / "list.csv").write_text("image,label\nscans/b.nii.gz,\nscans/a.nii.gz,\n")
    assert [case.name for case in discover_inputs(tmp_path / "list.csv")] == ["b", "a"]
    assert [case.name for case in discover_inputs(tmp_path / "scans")] == ["a", "b"]
    written = infer(tmp_path / "list.csv", tmp_path / "out", model=threshold_bundle, progress=False)
    assert [path.name for path in written] == ["b.nii.gz", "a.nii.gz"]
    with pytest.raises(ValueError, match="case name 'a'"):
        discover_inputs([tmp_path / "scans", tmp_path / "scans" / "a.nii.gz"])


def test_existing_outputs_are_kept_and_failed_runs_leave_nothing(threshold_bundle, tmp_path):
    scans = tmp_path / "scans"
    save_nifti(scans / "a.nii.gz", random_volume((12, 10, 8)), np.eye(4))
    infer(scans / "a.nii.gz", tmp_path / "out", model=threshold_bundle, progress=False)
    before = (tmp_path / "out" / "a.nii.gz").read_bytes()
    with pytest.raises(FileExistsError, match="a.nii.gz"):
        infer(scans, tmp_path / "out", model=threshold_bundle, progress=False)
    (scans / "b.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(ValueError, match="b.nii.gz cannot be read"):
        infer(scans, tmp_path / "out", model=threshold_bundle, overwrite=True, progress=False)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a.nii.gz"]  # no temporary files
    save_nifti(scans / "a.nii.gz", 1000.0 - random_volume((12, 10, 8)), np.eye(4))
    (scans / "b.nii.gz").unlink()
    infer(scans, tmp_path / "out", model=threshold_bundle, overwrite=True, progress=False)
    assert (tmp_path / "out" / "a.nii.gz").read_bytes() != before


def test_explicit_cpu_devices_match_auto(threshold_bundle, checkpoint, tmp_path):
    image = save_nifti(tmp_path / "scan.nii.gz", random_volume(seed=5), oblique_affine())
    options = {"model": checkpoint, "probabilities": True, "progress": False, "overlap": 0.5}
    infer(image, tmp_path / "auto", **options)
    infer(image, tmp_path / "cpu", device="cpu", sw_device="cpu", sw_batch_size=1, **options)
    a = read(tmp_path / "auto" / "probabilities" / "scan.nii.gz")[0]
    b = read(tmp_path / "cpu" / "probabilities" / "scan.nii.gz")[0]
    assert np.allclose(a, b, atol=1e-5)


def test_load_model_from_the_template_bundle(tmp_path, checkpoint):
    bundle = tmp_path / "attention_unet"
    shutil.copytree(bundle_template_dir(), bundle)
    shutil.copy(checkpoint, bundle / "models" / "model.pt")  # what training the bundle leaves there
    model, spec = load_model(bundle)
    assert spec == load_model(checkpoint)[1] and spec.preset == CONFIG["preset"]
    network = create_network("attention_unet_3d_small", spatial_dims=3, in_channels=1, out_channels=3)
    torch.save(network.state_dict(), bundle / "models" / "model.pt")  # a bare state dict says too little
    with pytest.raises(ValueError, match=r"lacks \['preset', 'roi_size'\]"):
        load_model(bundle)


ILL_OPTIONS = [
    ({"roi_size": (16, 16)}, "roi_size"),
    ({"overlap": 1.0}, "overlap"),
    ({"sw_batch_size": 0}, "sw_batch_size"),
    ({"blend": "gauss"}, "gauss"),
    ({"sw_device": "tpu"}, "tpu"),
]


@pytest.mark.parametrize("kwargs, message", ILL_OPTIONS)
def test_bad_options(threshold_bundle, tmp_path, kwargs, message):
    image = save_nifti(tmp_path / "scan.nii.gz", random_volume((12, 10, 8)), np.eye(4))
    options = {"progress": False, "model": threshold_bundle, **kwargs}
    with pytest.raises(ValueError, match=message):
        infer(image, tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_bad_model_sources(tmp_path, checkpoint):
    image = save_nifti(tmp_path / "scan.nii.gz", random_volume((12, 10, 8)), np.eye(4))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        infer(image, tmp_path / "out", model=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="scan.nii.gz cannot be read"):
        infer(image, tmp_path / "out", model=image)
    with pytest.raises(FileNotFoundError, match="has no models/model.pt"):
        load_model(tmp_path)
    model = create_network("attention_unet", **TINY)
    spec = {"spec": _spec(CONFIG, TINY).to_dict(), "model": model.state_dict(), "config": CONFIG}
    # weights of another network layout (the two-convolution decoder stages of earlier versions)
    old_layout = {k.replace(".conv.", ".convs.conv_0.", 1) if k.startswith("decoder.") else k: v
                  for k, v in model.state_dict().items()}  # fmt: skip
    stale = save_checkpoint(tmp_path / "stale.pt", {**spec, "model": old_layout, "config": CONFIG})
    with pytest.raises(ValueError, match="stale.pt: its weights do not fit the network it names"):
        infer(image, tmp_path / "out", model=stale)
    assert not (tmp_path / "out").exists()


def test_bundle_given_by_a_relative_path(threshold_bundle, tmp_path, monkeypatch):
    image = save_nifti(tmp_path / "scan.nii.gz", random_volume((12, 10, 8)), np.eye(4))
    monkeypatch.chdir(threshold_bundle.parent)
    model, spec = load_model(threshold_bundle.name)
    assert isinstance(model.conv, torch.nn.Conv3d) and spec.labels == CLASSES
    infer(image, tmp_path / "out", model=threshold_bundle.name, progress=False)
    assert (tmp_path / "out" / "scan.nii.gz").is_file()


def test_bad_inputs(tmp_path, threshold_bundle):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "no_image.csv").write_text("path\nx.nii.gz\n")
    (tmp_path / "missing.csv").write_text("image\nnowhere.nii.gz\n")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_inputs(tmp_path / "nowhere.nii.gz")
    with pytest.raises(FileNotFoundError, match="no images"):
        discover_inputs(tmp_path / "empty")
    with pytest.raises(ValueError, match="not an image"):
        discover_inputs(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="'image' column"):
        discover_inputs(tmp_path / "no_image.csv")
    with pytest.raises(FileNotFoundError, match="line 2"):
        discover_inputs(tmp_path / "missing.csv")
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((12, 10, 1, 2), dtype=np.float32), np.eye(4)), str(flat))
    with pytest.raises(ValueError, match="flat.nii.gz"):
        infer(flat, tmp_path / "out", model=threshold_bundle, progress=False)


def test_cli(threshold_bundle, tmp_path, capsys):
    image = save_nifti(tmp_path / "scan.nii.gz", random_volume((12, 10, 8)), oblique_affine())
    argv = [
        "infer",
        str(image),
        "--model",
        str(threshold_bundle),
        "--output",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    options = ["--roi-size", "8", "8", "8", "--blend", "constant", "--no-tta", "--probabilities"]
    assert main([*argv, *options]) == 0
    assert (tmp_path / "out" / "probabilities" / "scan.nii.gz").is_file()
    assert main(argv) == 2
    assert "exist" in capsys.readouterr().err


def test_2d_png_with_a_one_channel_sigmoid_model(tmp_path):
    from PIL import Image

    kwargs = {"spatial_dims": 2, "in_channels": 3, "out_channels": 1, "init_features": 4, "depth": 2}
    config = {**CONFIG, "preset": "image2d", "pixdim": None, "roi_size": [16, 16], "preset_kwargs": {}}
    config.update(spatial_dims=2, in_channels=3, out_channels=1, labels={"0": "background", "1": "object"})
    torch.manual_seed(0)
    spec = {"spec": _spec(config, kwargs).to_dict(), "config": config}
    spec["model"] = create_network("attention_unet", **kwargs).state_dict()
    checkpoint = save_checkpoint(tmp_path / "model2d.pt", spec)
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    options = {"model": checkpoint, "tta": True, "largest_component": True, "progress": False}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = infer(tmp_path / "photo.png", tmp_path / "out", probabilities=True, **options)
    # A picture's chain moves no pixel: nothing to invert, and no MONAI warning saying so for each image
    assert not [w for w in caught if "inverse has been called" in str(w.message)]
    labels, _ = read(written[0])
    probabilities, _ = read(tmp_path / "out" / "probabilities" / "photo.nii.gz")
    assert labels.shape == (30, 20, 1, 1) and probabilities.shape == (30, 20, 1, 1)  # PIL: width first
    assert set(np.unique(labels)) <= {0, 1} and probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    assert ndimage.label(labels == 1)[1] <= 1


def test_cli_refuses_a_scan_with_nan_voxels_in_one_line(checkpoint, tmp_path, capsys):
    """8 NaN voxels would spread over the whole scan in its normalisation and give an all-background map."""
    volume = random_volume((64, 64, 32))
    volume[10:12, 10:12, 5:7] = np.nan  # 8 voxels
    scan = save_nifti(tmp_path / "nan_scan.nii.gz", volume, np.diag([1.5, 1.5, 2.0, 1.0]))
    argv = [
        "infer",
        str(scan),
        "--model",
        str(checkpoint),
        "--output",
        str(tmp_path / "out"),
        "--no-progress",
    ]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert f"{scan} has 8 NaN or infinite voxels" in error and "nan_to_num" in error
    assert not (tmp_path / "out" / "nan_scan.nii.gz").exists()


def test_apply_model_refuses_infinite_voxels_of_an_array(checkpoint):
    network, spec = load_model(checkpoint)
    volume = random_volume((16, 16, 8))
    volume[0, 0, :3] = np.inf
    with pytest.raises(ValueError, match="has 3 NaN or infinite voxels"):
        apply_model(network, spec, volume, affine=np.eye(4))
