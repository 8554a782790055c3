"""The results page: ``attnunet evaluate --images`` writes ``report.html`` (every case, worst first, a NiiVue
viewer of each), ``attnunet view`` writes a page of one image and serves pages on 127.0.0.1; in headless
Chromium the page names every case, draws its canvas, loads the case a URL names and asks nothing of any
other host. The browser tests skip where no Chromium is installed (``.ci/run`` installs it with apt-get)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from browser import WINDOW, RecordingServer, find_chromium, run_chromium
from PIL import Image

from attnunet.cli import main
from attnunet.pipelines.evaluation.metrics import evaluate
from attnunet.pipelines.evaluation.page_volumes import CaseFiles, page_grid, prepare_case
from attnunet.pipelines.evaluation.report import STATIC, files_folder, find_images, write_case_page
from attnunet.pipelines.evaluation.server import page_address, serve, serve_in_background

CLASSES = ["background", "organ", "lesion"]
needs_chromium = pytest.mark.skipif(
    find_chromium() is None, reason="no chromium on PATH (apt-get install chromium)"
)


def page_data(page: Path) -> dict:
    """The cases, columns and classes a page holds (its JSON script element)."""
    found = re.search(
        r'<script type="application/json" id="page-data">(.*?)</script>', page.read_text(), re.S
    )
    assert found is not None
    return json.loads(found.group(1))


@pytest.fixture(scope="module")
def inputs(demo_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Images and labels of three cases: one predicted exactly, one with its lesion predicted as organ, one
    without a prediction (a training case)."""
    root = tmp_path_factory.mktemp("inputs")
    folders = {name: root / name for name in ("images", "labels", "predictions")}
    for folder in folders.values():
        folder.mkdir()
    tests = sorted(p.name for p in (demo_dataset / "imagesTs").glob("*.nii.gz"))
    train = sorted(p.name for p in (demo_dataset / "imagesTr").glob("*.nii.gz"))[0]
    for name in tests:
        shutil.copy(demo_dataset / "imagesTs" / name, folders["images"] / name)
        shutil.copy(demo_dataset / "labelsTs" / name, folders["labels"] / name)
    shutil.copy(demo_dataset / "imagesTr" / train, folders["images"] / train)
    shutil.copy(demo_dataset / "labelsTr" / train, folders["labels"] / train)
    perfect, worse = tests
    shutil.copy(folders["labels"] / perfect, folders["predictions"] / perfect)
    label = nib.load(folders["labels"] / worse)
    wrong = np.asarray(label.dataobj).copy()
    wrong[wrong == 2] = 1
    nib.save(nib.Nifti1Image(wrong, label.affine), folders["predictions"] / worse)
    cut = len(".nii.gz")
    return {**folders, "perfect": perfect[:-cut], "worse": worse[:-cut], "missing": train[:-cut]}


@pytest.fixture(scope="module")
def report(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("evaluation")
    summary = evaluate(
        inputs["predictions"],
        inputs["labels"],
        output_dir=output,
        class_names=CLASSES,
        images=inputs["images"],
        progress=False,
    )
    assert summary["missing"] == [inputs["missing"]]
    assert summary["files"]["report"] == str(output / "report.html")
    return output / "report.html"


def test_report_holds_every_case_worst_first_with_its_volumes(report, inputs):
    data = page_data(report)
    cases = {case["name"]: case for case in data["cases"]}
    assert set(cases) == {inputs["perfect"], inputs["worse"], inputs["missing"]}
    assert data["sort"] == {"key": "mean_dice", "descending": False}  # ascending mean Dice: worst first
    assert cases[inputs["perfect"]]["values"]["mean_dice"] == pytest.approx(1.0)
    assert cases[inputs["worse"]]["values"]["mean_dice"] < 1.0
    assert cases[inputs["missing"]]["values"]["mean_dice"] is None  # not scored: sorts first
    assert cases[inputs["missing"]]["status"] == "missing prediction"
    assert cases[inputs["missing"]]["layers"]["prediction"] is None
    assert [c["name"] for c in data["classes"]] == ["organ", "lesion"]
    keys = [column["key"] for column in data["columns"]]
    for name in ("organ", "lesion"):
        assert {f"dice_{name}", f"hd95_{name}", f"nsd_{name}"} <= set(keys)
        assert {f"label_volume_{name}", f"prediction_volume_{name}"} <= set(keys)
    # Volumes in ml, from the label's voxels and spacing; the worse prediction has no lesion.
    label = nib.load(inputs["labels"] / f"{inputs['worse']}.nii.gz")
    voxel_ml = float(np.prod(label.header.get_zooms()[:3])) / 1000
    expected = np.count_nonzero(np.asarray(label.dataobj) == 2) * voxel_ml
    values = cases[inputs["worse"]]["values"]
    assert (
        values["label_volume_lesion"] == pytest.approx(expected) and values["prediction_volume_lesion"] == 0
    )
    # Every layer is a file in the page's own folder; the image is the file itself.
    for case in data["cases"]:
        for kind, address in case["layers"].items():
            if address is not None:
                assert (report.parent / unquote(address)).is_file(), (case["name"], kind)
    image = report.parent / unquote(cases[inputs["perfect"]]["layers"]["image"])
    assert image.read_bytes() == (inputs["images"] / f"{inputs['perfect']}.nii.gz").read_bytes()
    shown = nib.load(report.parent / unquote(cases[inputs["perfect"]]["layers"]["prediction"]))
    source = nib.load(inputs["labels"] / f"{inputs['perfect']}.nii.gz")
    assert shown.get_data_dtype() == np.uint8 and np.allclose(shown.affine, source.affine, atol=1e-4)
    assert np.array_equal(np.asarray(shown.dataobj), np.asarray(source.dataobj))
    files = files_folder(report)
    for name in ("viewer.js", "viewer.css", "niivue/niivue.js", "niivue/LICENSE"):
        assert (files / name).is_file(), name


def test_the_page_and_its_script_name_no_other_host(report):
    """What the page itself loads is relative: no http(s) address at all in the page, its script and style."""
    for path in (report, STATIC / "page.html", STATIC / "viewer.js", STATIC / "viewer.css"):
        assert not re.findall(r"(?:https?|wss?)://", path.read_text()), path
    # The vendored NiiVue imports nothing: one self-contained file.
    niivue = (STATIC / "niivue" / "niivue.js").read_text()
    static = r"""^\s*import\s+[\w{*][^;]*?\bfrom\s*["']|^\s*import\s*["']"""
    assert not re.search(static, niivue, re.M) and not re.search(r"""\bimport\s*\(\s*["'`]""", niivue)


def test_the_vendored_niivue_is_the_one_its_readme_names():
    folder = STATIC / "niivue"
    readme, script = (folder / "README.md").read_text(), (folder / "niivue.js").read_bytes()
    version = re.search(r"version \*\*([0-9.]+)\*\*", readme).group(1)
    assert f'version: "{version}"'.encode() in script and f"@niivue/niivue@{version}" in readme
    assert hashlib.sha256(script).hexdigest() in readme
    assert "BSD 2-Clause License" in (folder / "LICENSE").read_text()
    assert len(script) < 4_000_000  # a few MB in the package and in every results folder


def test_evaluate_command_writes_and_names_the_report(inputs, tmp_path, capsys):
    output = tmp_path / "eval"
    args = ["evaluate", "--predictions", str(inputs["predictions"]), "--labels", str(inputs["labels"])]
    args += [
        "--images",
        str(inputs["images"]),
        "--output",
        str(output),
        "--classes",
        *CLASSES,
        "--no-progress",
    ]
    assert main(args) == 1  # a missing prediction is still an error of the run; the page shows it
    assert (
        f"report: {output / 'report.html'}; open it with: attnunet view {output}" in capsys.readouterr().out
    )
    assert main(args) == 2 and "report.html" in capsys.readouterr().err  # refused without --overwrite
    assert main([*args, "--overwrite"]) == 1
    missing = ["--images", str(tmp_path / "none")]
    assert main([*args[:-2], *missing, "--output", str(tmp_path / "e2"), "--no-progress"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_a_large_volume_is_shown_downsampled(tmp_path):
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    affine[:3, 3] = [10.0, -20.0, 5.0]
    image = np.random.default_rng(0).normal(size=(40, 40, 20)).astype(np.float32)
    label = np.zeros((40, 40, 20), np.uint8)
    label[10:30, 10:30, 5:15] = 1
    label[18:22, 18:22, 9:11] = 2
    for name, array in (("image", image), ("label", label)):
        nib.save(nib.Nifti1Image(array, affine), tmp_path / f"{name}.nii.gz")
    page = prepare_case(
        CaseFiles("c", tmp_path / "image.nii.gz", tmp_path / "label.nii.gz"),
        tmp_path / "page",
        max_voxels=4000,
    )
    assert "downsampled" in page.note and "full resolution" in page.note
    shown = {kind: nib.load(path) for kind, path in page.layers.items()}
    assert np.prod(shown["image"].shape) <= 4000 and shown["image"].shape == shown["label"].shape
    assert set(np.unique(np.asarray(shown["label"].dataobj))) == {0, 1, 2}
    # The same field of view: the corners of the new grid's outer voxels are the old ones'.
    for grid in (shown["image"],):
        scale = np.array([40, 40, 20]) / np.array(grid.shape)
        corner = grid.affine @ np.array([-0.5, -0.5, -0.5, 1])
        assert np.allclose(corner, affine @ np.array([-0.5, -0.5, -0.5, 1]))
        assert np.allclose(np.diag(grid.affine)[:3], np.diag(affine)[:3] * scale)
    # Counts are of the full-resolution label.
    assert page.counts["label"][2] == 4 * 4 * 2
    assert page_grid((64, 64, 1), np.eye(4), 1024)[0] == (32, 32, 1)  # a one-slice axis stays one slice


def test_a_dicom_series_and_a_picture_become_nifti_for_the_page(tmp_path, write_dicom_series):
    volume = sitk.GetImageFromArray(np.arange(6 * 12 * 10, dtype=np.int16).reshape(6, 12, 10))
    volume.SetSpacing((0.7, 0.7, 2.5))
    write_dicom_series(volume, tmp_path / "series", "1.2.826.0.1.3680043.8.498.1", "axial")
    page = prepare_case(CaseFiles("series", tmp_path / "series"), tmp_path / "page-series")
    shown = nib.load(page.layers["image"])
    assert page.note == "" and shown.shape == (10, 12, 6)  # x, y, z as the readers give it
    assert np.allclose(np.abs(np.diag(shown.affine))[:3], [0.7, 0.7, 2.5], atol=1e-4)

    picture = np.zeros((30, 20, 3), np.uint8)
    picture[5:15, 4:12] = (200, 80, 40)
    mask = np.zeros((30, 20), np.uint8)
    mask[5:15, 4:12] = 255  # a 0/255 mask, as DRIVE's
    Image.fromarray(picture).save(tmp_path / "21_training.png")
    Image.fromarray(mask).save(tmp_path / "21_manual1.png")
    image, mask_file = tmp_path / "21_training.png", tmp_path / "21_manual1.png"
    page_file = write_case_page(tmp_path / "page-2d", image, mask_file)
    (case,) = page_data(page_file)["cases"]
    label = nib.load(page_file.parent / unquote(case["layers"]["label"]))
    assert label.shape == (20, 30, 1) and np.allclose(label.affine, np.eye(4))
    assert set(np.unique(np.asarray(label.dataobj))) == {0, 1}
    assert case["values"]["label_volume_class_1"] == 80  # pixels: a picture has no voxel size


def test_images_are_found_by_case_channel_series_or_leading_token(tmp_path):
    for name in ("a.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz", "21_training.tif", "case_001.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "series").mkdir()
    found = find_images(tmp_path, ["a", "b", "series", "21_manual1", "case_001", "case_002"])
    assert {k: v.name for k, v in found.items()} == {
        "a": "a.nii.gz",
        "b": "b_0000.nii.gz",
        "series": "series",
        "21_manual1": "21_training.tif",
        "case_001": "case_001.nii.gz",  # and never case_002's
    }
    with pytest.raises(FileNotFoundError, match="not a folder"):
        find_images(tmp_path / "a.nii.gz", ["a"])


def test_view_writes_a_page_of_one_image(inputs, tmp_path, capsys):
    case = inputs["perfect"]
    image, label = inputs["images"] / f"{case}.nii.gz", inputs["labels"] / f"{case}.nii.gz"
    prediction, output = inputs["predictions"] / f"{case}.nii.gz", tmp_path / "page"
    args = [
        "view",
        str(image),
        "--label",
        str(label),
        "--prediction",
        str(prediction),
        "--output",
        str(output),
    ]
    assert main([*args, "--classes", *CLASSES, "--no-serve"]) == 0
    assert f"open it with: attnunet view {output}" in capsys.readouterr().out
    data = page_data(output / "view.html")
    (only,) = data["cases"]
    assert only["name"] == case and all(only["layers"].values())
    assert [c["name"] for c in data["classes"]] == ["organ", "lesion"]
    assert only["values"]["label_volume_organ"] == only["values"]["prediction_volume_organ"] > 0
    # The folder of a page is served as it is; an image option beside it is refused.
    assert main(["view", str(output), "--no-serve"]) == 0
    assert main(["view", str(output), "--label", str(label), "--no-serve"]) == 2
    assert main(["view", str(tmp_path / "absent.nii.gz"), "--no-serve"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_serving_a_results_folder_loads_neither_monai_nor_torch(report):
    """``attnunet view FOLDER`` starts at once: it only serves files."""
    code = (
        "import sys\n"
        "from attnunet.cli import main\n"
        f"assert main(['view', {str(report.parent)!r}, '--no-serve']) == 0\n"
        "print(sorted(m for m in ('monai', 'torch', 'nibabel') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "[]", done.stdout


def test_the_server_answers_on_loopback_and_moves_off_a_busy_port(report):
    server = serve_in_background(report.parent)
    try:
        assert server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(page_address(server, "report.html"), timeout=10) as answer:
            assert answer.status == 200 and b"page-data" in answer.read()
        busy = serve(report.parent, server.server_port)  # that port is taken: another one
        assert busy.server_port != server.server_port
        busy.server_close()
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(NotADirectoryError):
        serve(report, 0)


def _offsite(urls: list[str]) -> list[str]:
    """The URLs that go to a host other than 127.0.0.1 over the network."""
    return [
        url
        for url in urls
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and urlsplit(url).hostname != "127.0.0.1"
    ]


@needs_chromium
def test_the_report_draws_each_case_in_a_browser_offline(report, inputs, tmp_path):
    server = RecordingServer(report.parent)
    try:
        first = run_chromium(server.url("report.html"), tmp_path / "first")
        assert first.body("webgl2") == "yes", "headless Chromium has no WebGL2 (SwiftShader flags)"
        assert first.body("state") == "loaded", re.findall(r'id="message">([^<]*)<', first.dom)
        for name in (inputs["perfect"], inputs["worse"], inputs["missing"]):
            assert f"<td>{name}</td>" in first.dom
        assert first.body("case") == inputs["missing"]  # worst first: the case without a prediction
        asked = list(server.requests)
        assert any("niivue/niivue.js" in path for path in asked)
        assert any(inputs["missing"] in path and path.endswith("label.nii.gz") for path in asked)

        # Another case by its address: its volumes are fetched and shown.
        perfect = inputs["perfect"]
        second = run_chromium(server.url(f"report.html#case={perfect}"), tmp_path / "second")
        assert second.body("case") == perfect and second.body("state") == "loaded"
        assert second.body("volumes") == "3"
        assert any(perfect in path and path.endswith("prediction.nii.gz") for path in server.requests)

        # The canvas is drawn: its pixels vary (a blank WebGL canvas is one colour).
        shot = run_chromium(server.url(f"report.html#case={perfect}"), tmp_path / "shot", screenshot=True)
        left, top, width, height = (int(v) for v in second.body("canvas").split(","))
        assert width > 100 and height > 100 and left + width <= WINDOW[0]
        pixels = np.asarray(Image.open(shot.screenshot).convert("RGB"), dtype=np.float32)
        canvas = pixels[top + 5 : top + height - 5, left + 5 : left + width - 5]
        assert canvas.std() > 10, f"the canvas looks blank (pixel std {canvas.std():.2f})"
        lit = (canvas.max(axis=2) > 30).mean()
        assert lit > 0.02, f"only {lit:.1%} of the canvas is drawn"
        coloured = np.abs(canvas[..., 0] - canvas[..., 1]) > 40  # the label overlays: not gray
        assert coloured.mean() > 0.001, "no class colour on the canvas"

        # Everything the page asked for came from 127.0.0.1. (The browser's own services, its update check
        # say, are not the page's; other names do not resolve in these runs, so they cannot leave either.)
        for run in (first, second, shot):
            assert any(url.endswith("niivue/niivue.js") for url in run.page_requests), run.requests
            assert not _offsite(run.page_requests), _offsite(run.page_requests)
        assert all(not path.startswith("http") for path in server.requests)
    finally:
        server.shutdown()
        server.server_close()
