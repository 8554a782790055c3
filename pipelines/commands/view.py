"""``attnunet view``: serve a results page on 127.0.0.1: ``evaluate --images``'s ``report.html``, or a page
written for one image with its label and prediction. Its options are declared once in :data:`OPTIONS`;
the page writing (nibabel, MONAI's readers) is imported by :func:`run` only."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from attnunet.pipelines.options import Option, add_options

__all__ = ["OPTIONS", "add_arguments", "run"]

OPTIONS: tuple[Option, ...] = (
    Option(
        "path",
        "a results folder (evaluate's --output with --images, or a folder view wrote), or an image "
        "(a file or a DICOM series folder) to show with --label and --prediction",
        flag=None,
    ),
    Option("label", "reference label map of the image (default: none)"),
    Option("prediction", "predicted label map of the image (default: none)"),
    Option(
        "classes",
        "class names in index order, background first (default: class_K for each label value)",
        nargs="+",
        metavar="NAME",
    ),
    Option("output", "folder for the page of one image (default: a new temporary folder)"),
    Option(
        "port",
        "port on 127.0.0.1; a busy one is replaced by a free one (default: %(default)s)",
        8000,
        type=int,
    ),
    Option(
        "serve",
        "write the page and print how to open it, without serving (default: serve until Ctrl-C)",
        True,
        flag="--no-serve",
        action="store_false",
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``attnunet view``."""
    add_options(parser, OPTIONS)


def run(args: argparse.Namespace) -> int:
    """Run ``attnunet view``: find or write the page, then serve its folder until interrupted."""
    from attnunet.pipelines.evaluation.server import find_page, page_address, serve

    path = Path(args.path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    page = find_page(path) if path.is_dir() else None
    if page is not None:
        if args.label or args.prediction or args.output:
            raise ValueError(
                f"{path} holds a results page; --label, --prediction and --output go with an image"
            )
    else:
        from attnunet.pipelines.evaluation.report import write_case_page  # MONAI's readers: only to write

        folder = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="attnunet-view-"))
        page = write_case_page(folder, path, args.label, args.prediction, args.classes)
        print(f"wrote {page}")
    if not args.serve:
        where = page.parent
        print(f"open it with: attnunet view {where}  (or: python -m http.server --bind 127.0.0.1 -d {where})")
        return 0
    server = serve(page.parent, args.port)
    print(f"serving {page.parent} at {page_address(server, page.name)}  (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
