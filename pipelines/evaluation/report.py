"""The results page in a browser: ``OUTPUT/report.html`` of ``attnunet evaluate --images`` (every case's
scores in a sortable table, worst first, and a NiiVue viewer of the selected case: the image with the
reference and the prediction as label overlays) and ``view.html`` of ``attnunet view IMAGE`` (one case).

A page is one HTML file (``static/page.html`` with the cases as JSON in it) and a folder beside it,
``<page>_files/``, holding the viewer's script, NiiVue (vendored in ``static/niivue/``: nothing is fetched
from the network) and every case's volumes (:mod:`attnunet.pipelines.evaluation.page_volumes`), so the
folder is whole when moved. Browsers load ES modules and volumes over HTTP only, not from ``file://``:
``attnunet view FOLDER`` (or ``python -m http.server`` in it) serves it on 127.0.0.1.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from attnunet.atomic import atomic_output
from attnunet.pipelines.data.files import case_name, list_images, match_by_leading_token
from attnunet.pipelines.evaluation.page_volumes import (
    MAX_VOXELS,
    CaseFiles,
    PageCase,
    class_volumes,
    prepare_case,
)
from attnunet.pipelines.evaluation.server import REPORT_FILE, VIEW_FILE
from attnunet.transforms.formats import IMAGE2D_SUFFIXES, IMAGE_SUFFIXES

__all__ = [
    "CLASS_COLOURS",
    "REPORT_FILE",
    "VIEW_FILE",
    "files_folder",
    "find_images",
    "write_case_page",
    "write_page",
    "write_report",
]

STATIC = Path(__file__).resolve().with_name("static")
# What every page's folder gets from the package: the page's script and style, and NiiVue.
SHIPPED = ("viewer.js", "viewer.css", "niivue/niivue.js", "niivue/LICENSE")
# Class k's colour is CLASS_COLOURS[(k - 1) % 8], in the pages and in the overlay PNGs alike.
CLASS_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6")
_METRIC_COLUMNS = (("dice", "Dice", 3), ("hd95", "HD95 mm", 2), ("nsd", "surface Dice", 3))


def files_folder(page: Path) -> Path:
    """The folder of a page's script and volumes: ``report.html`` -> ``report_files/``."""
    return page.with_name(f"{page.stem}_files")


def _json_value(value: Any) -> Any:
    """A score as JSON holds it: NaN (not scored) as null, infinite distances as "inf"."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


def write_page(page: Path, title: str, data: Mapping[str, Any]) -> Path:
    """Write the page ``page`` (atomically) with ``data`` (cases, columns, classes, notes, sort) in it, and
    the viewer's files into its folder."""
    files = files_folder(page)
    files.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED:
        (files / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(STATIC / name, files / name)
    # "</" would end the <script> element that holds the data; JSON reads "<\/" as "</".
    text = json.dumps({**data, "title": title}, allow_nan=False).replace("</", "<\\/")
    filled = (
        (STATIC / "page.html")
        .read_text()
        .replace("__TITLE__", html.escape(title))
        .replace("__FILES__", quote(files.name))
        .replace("__DATA__", text)
    )
    with atomic_output(page) as tmp:
        tmp.write_text(filled)
    return page


def _case_folder(files: Path, index: int, name: str) -> Path:
    """A case's folder in the page's folder: its position and its name in safe characters."""
    return files / "cases" / f"{index:04d}_{re.sub(r'[^A-Za-z0-9._-]+', '_', name)[:80]}"


def _layers(page: Path, prepared: PageCase) -> dict[str, str | None]:
    """Each layer's address relative to the page (None where absent)."""
    addresses: dict[str, str | None] = dict.fromkeys(("image", "label", "prediction"))
    for kind, path in prepared.layers.items():
        addresses[kind] = quote(path.relative_to(page.parent).as_posix())
    return addresses


def _classes(table: Mapping[int, str]) -> list[dict[str, Any]]:
    return [
        {"value": value, "name": name, "colour": CLASS_COLOURS[(value - 1) % len(CLASS_COLOURS)]}
        for value, name in table.items()
        if value > 0
    ]


def _volume_columns(table: Mapping[int, str], unit: str) -> list[dict[str, Any]]:
    digits = 0 if unit == "px" else 2
    return [
        {
            "key": f"{kind}_volume_{name}",
            "label": f"{name} {short} {unit}",
            "title": f"{name}: volume in the {what} ({unit})",
            "digits": digits,
        }
        for value, name in table.items()
        if value > 0
        for kind, short, what in (("label", "ref", "reference"), ("prediction", "pred", "prediction"))
    ]


def find_images(images: str | os.PathLike, names: Iterable[str]) -> dict[str, Path]:
    """Case name -> its image in the folder ``images``: ``<case>.<ext>``, the first channel of nnU-Net's
    ``<case>_0000.<ext>``, a DICOM series folder ``<case>/``, or the one image with the same leading token
    (DRIVE: label ``21_manual1``, image ``21_training``); cases without an image are left out.

    Raises:
        FileNotFoundError: ``images`` is not a folder.
    """
    folder = Path(images)
    if not folder.is_dir():
        raise FileNotFoundError(f"images {folder} is not a folder")
    names = list(names)
    files = {case_name(path): path for path in list_images(folder, IMAGE_SUFFIXES + IMAGE2D_SUFFIXES)}
    series = {path.name: path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")}
    # A leading token matches only images no case has by its own name: case_003 never gets case_001's image.
    others = {key: path for key, path in files.items() if key not in names}
    found = {}
    for name in names:
        path = (
            files.get(name)
            or files.get(f"{name}_0000")
            or series.get(name)
            or match_by_leading_token(name, others)
        )
        if path is not None:
            found[name] = path
    return found


def _mean(values: Sequence[Any]) -> float | None:
    finite = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def write_report(
    page: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    classes: Mapping[int, str],
    regions: Sequence[str],
    images: str | os.PathLike,
    *,
    sources: Mapping[str, str] | None = None,
    max_voxels: int = MAX_VOXELS,
) -> Path:
    """Write ``report.html`` of ``attnunet evaluate`` from its case rows (``metrics.csv``'s) and the images.

    Args:
        page: the page to write (``OUTPUT/report.html``); its folder ``report_files/`` is replaced.
        rows: one per case: ``case``, ``status``, ``label``, ``prediction`` and ``<metric>_<class>``.
        classes: label value -> class name, background at 0.
        regions: the regions' names (their scores are columns after the classes').
        images: the folder of the images the labels were drawn on (see :func:`find_images`).
        sources: what the page names as its inputs (``{"predictions": ..., "labels": ...}``).
        max_voxels: volumes over this many voxels are shown downsampled.

    Returns:
        the page.
    """
    page = Path(page)
    files = files_folder(page)
    if files.exists():
        shutil.rmtree(files)
    found = find_images(images, [row["case"] for row in rows])
    foreground = [name for value, name in classes.items() if value > 0]
    cases, unit = [], "ml"
    for index, row in enumerate(rows):
        name = row["case"]
        label = Path(row["label"]) if row.get("label") else None
        prediction = Path(row["prediction"]) if row.get("prediction") else None
        prepared = prepare_case(
            CaseFiles(name, found.get(name), label, prediction), _case_folder(files, index, name), max_voxels
        )
        unit = "ml" if prepared.voxel_ml is not None else "px"
        values = {key: row.get(key) for key in row if key.split("_", 1)[0] in ("dice", "hd95", "nsd")}
        values["mean_dice"] = (
            _mean([row.get(f"dice_{c}") for c in foreground]) if row["status"] == "ok" else None
        )
        values.update(class_volumes(prepared, classes))
        note = "; ".join(filter(None, ["no image found" if name not in found else "", prepared.note]))
        cases.append(
            {
                "name": name,
                "status": row["status"],
                "values": {key: _json_value(value) for key, value in values.items()},
                "layers": _layers(page, prepared),
                "note": note,
            }
        )
    columns = [{"key": "mean_dice", "label": "mean Dice", "title": "mean Dice over the classes", "digits": 3}]
    for name in [*foreground, *regions]:
        columns += [
            {"key": f"{metric}_{name}", "label": f"{name} {label}", "digits": digits}
            for metric, label, digits in _METRIC_COLUMNS
        ]
    columns += _volume_columns(classes, unit)
    shown = ", ".join(f"{what} {where}" for what, where in {**(sources or {}), "images": str(images)}.items())
    notes = [
        f"{len(rows)} cases, worst first (mean Dice over the classes; not scored first).",
        "Click a column to sort by it, a row to view the case.",
        f"From {shown}.",
    ]
    data = {
        "notes": notes,
        "classes": _classes(classes),
        "columns": columns,
        "sort": {"key": "mean_dice", "descending": False},
        "cases": cases,
    }
    return write_page(page, "attnunet evaluation", data)


def write_case_page(
    folder: str | os.PathLike,
    image: str | os.PathLike,
    label: str | os.PathLike | None = None,
    prediction: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    *,
    max_voxels: int = MAX_VOXELS,
) -> Path:
    """Write ``folder/view.html``: one image with its label and prediction as overlays, each class's volume.

    Args:
        folder: where the page and its ``view_files/`` go (created; an earlier page there is replaced).
        image: the image (a file or a DICOM series folder).
        label, prediction: label maps on the image's grid (either may be left out).
        class_names: names in index order, background first; default ``class_K`` for each value found.

    Raises:
        FileNotFoundError: a given file does not exist.
    """
    given = {"image": image, "label": label, "prediction": prediction}
    for kind, path in given.items():
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{kind} {path} does not exist")
    page = Path(folder) / VIEW_FILE
    files = files_folder(page)
    if files.exists():
        shutil.rmtree(files)
    paths = {kind: Path(path) if path is not None else None for kind, path in given.items()}
    name = case_name(paths["image"])
    prepared = prepare_case(CaseFiles(name, **paths), _case_folder(files, 0, name), max_voxels)
    highest = max([0, *(v for counts in prepared.counts.values() for v in counts)])
    if class_names is not None:
        classes = dict(enumerate(map(str, class_names)))
    else:
        classes = {value: f"class_{value}" if value else "background" for value in range(highest + 1)}
    unit = "ml" if prepared.voxel_ml is not None else "px"
    data = {
        "notes": [
            f"{paths['image']}" + "".join(f", {k} {p}" for k, p in paths.items() if p and k != "image")
        ],
        "classes": _classes(classes),
        "columns": _volume_columns(classes, unit),
        "sort": {"key": "case", "descending": False},
        "cases": [
            {
                "name": name,
                "status": "ok",
                "values": {k: _json_value(v) for k, v in class_volumes(prepared, classes).items()},
                "layers": _layers(page, prepared),
                "note": prepared.note,
            }
        ],
    }
    return write_page(page, f"attnunet view: {name}", data)
