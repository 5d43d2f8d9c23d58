"""The Snakemake report of the shipped example, opened in a real headless browser (chromium), and
the figures operations make."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from conftest import Project
from slurm_cluster import ensure_packages

from opchain.datastore import url_to_path
from opchain.report import html_table, new_figure, save_figures

# Clicks the report app as a person would: each step is a link's text, or css:<selector>.
NAVIGATE = """<script data-steps='%s'>
function click(step) {
  const found = step.startsWith("css:")
    ? [...document.querySelectorAll(step.slice(4))]
    : [...document.querySelectorAll("a,button,span,td")].filter(e => e.textContent.trim() === step);
  const element = found.pop();
  if (!element) { document.title = "missing: " + step; return; }
  (element.closest("a,button") || element).click();
}
JSON.parse(document.currentScript.dataset.steps).forEach((step, i) =>
  setTimeout(() => click(step), 1000 * (i + 1)));
</script>"""


def debian_tool(command: str, *packages: str) -> str:
    """A Debian program, installed with apt-get when missing (as the SLURM test installs slurm)."""
    ensure_packages(packages, lambda: shutil.which(command) is not None)
    return shutil.which(command) or command


def chromium() -> str:
    return debian_tool("chromium", "chromium")


def read_screen(shot: Path) -> str:
    """The words a person reads on a screenshot, right of the report's menu: Debian's tesseract
    on a 3x enlarged grey copy. 1, i and l read alike at this size, so they are folded into l."""
    from PIL import Image

    image = Image.open(shot).convert("L").crop((290, 0, 1400, 900))
    big = shot.with_suffix(".big.png")
    image.resize((image.width * 3, image.height * 3), Image.Resampling.LANCZOS).save(big)
    ocr = [debian_tool("tesseract", "tesseract-ocr", "tesseract-ocr-eng"), str(big), "-"]
    text = subprocess.run(ocr, capture_output=True, text=True, check=True).stdout
    return fold(text)


def fold(text: str) -> str:
    return re.sub(r"[1iI]", "l", text)


def browse(report: Path, steps: list[str], tmp_path: Path, shot: Path | None = None) -> str:
    """Open ``report`` in headless chromium, click ``steps``; return the rendered DOM, or save a
    screenshot to ``shot``."""
    html = report.read_text(encoding="utf-8")
    end = html.rfind("</body>")
    page = tmp_path / f"page_{len(list(tmp_path.glob('page_*')))}.html"
    page.write_text(html[:end] + NAVIGATE % json.dumps(steps) + html[end:], encoding="utf-8")
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
               f"--virtual-time-budget={1000 * (len(steps) + (8 if shot else 3))}", "--window-size=1400,900",
               f"--screenshot={shot}" if shot else "--dump-dom", page.as_uri()]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert "<title>missing" not in result.stdout
    return result.stdout


def data_uris(dom: str, mime: str) -> list[bytes]:
    """The contents of the data: URIs of type ``mime`` that the page shows (img/iframe src)."""
    found = re.findall(rf'<(?:img|iframe) src="data:{mime};[^"]*?base64,([^"]+)"', dom)
    return [base64.b64decode(unquote(data)) for data in found]


@pytest.fixture(scope="module")
def report(example: Project) -> Path:
    example.snakemake("--report", "report.html")
    return example.root / "report.html"


def test_report_shows_the_results_table_of_each_chain(report: Path, tmp_path: Path) -> None:
    dom = browse(report, ["digits", "results table", "css:a[iconname=eye]"], tmp_path)
    (table,) = data_uris(dom, "text/html")  # shown in the page, in an iframe
    text = table.decode()
    assert "<table" in text and "nearest_centroid" in text and "accuracy" in text
    assert "param.pca.components" in text and "example_data/digits/first_half" in text
    for chain in ("digits", "cells"):
        assert f"<span>{chain}</span>" in browse(report, [], tmp_path)  # one category per chain


def test_the_results_table_shows_each_cell_as_pandas_to_html_would() -> None:
    """The report's tables are written without pandas' HTML writer (seconds for a sweep's
    10,000 rows), cell for cell as it shows them: scores to 4 significant digits, missing
    values blank, text escaped and trimmed."""
    import pandas as pd

    frames = [
        pd.DataFrame(
            {
                "score.a<b": [1.5, np.nan, 1e-7, 123456.0, -0.0, np.inf],
                "run": [1, 2, 3, 4, 5, 6],
                "input": ["x<y&z", None, np.nan, "z", "", " s "],
                "flag": [True, False, True, False, True, True],
                "param.mixed": [1.5, "s", None, 2, np.nan, 1e20],
            }
        ),
        pd.DataFrame(
            {
                "n": pd.Series([1, None, 3], dtype="Int64"),
                "f32": np.array([1.25, 3.3333333, np.nan], np.float32),
            }
        ),
        pd.DataFrame({"empty": []}),
    ]
    for frame in frames:
        expected = frame.to_html(index=False, na_rep="", float_format="{:.4g}".format)
        cells = r"<t[dh]>(.*?)</t[dh]>"
        assert re.findall(cells, html_table(frame)) == re.findall(cells, expected)


def test_report_shows_a_score_figure_per_swept_parameter(report: Path, tmp_path: Path) -> None:
    steps = ["digits", "nearest_centroid", "accuracy by pca.components"]
    listing = browse(report, steps[:2], tmp_path)
    assert "accuracy by pca.components" in listing
    shot = tmp_path / "figure.png"
    dom = browse(report, [*steps[:2], "css:a[iconname=eye]"], tmp_path)
    (png,) = data_uris(dom, "image/png")
    assert png.startswith(b"\x89PNG")
    # The figure is on screen: the right of the window (the view) is mostly not blank.
    from matplotlib.image import imread

    browse(report, [*steps[:2], "css:a[iconname=eye]"], tmp_path, shot)
    pixels = imread(shot)[:, 420:, :3]
    drawn = (pixels.min(axis=2) < 0.9).mean()
    assert drawn > 0.01, f"only {drawn:.3%} of the view is drawn"


def test_operations_figures_are_saved_as_png_with_datastore_urls(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    folder = storage / "operation_results" / "1" / ".dataset_1.tmp" / "datastore"
    final = storage / "operation_results" / "1" / "dataset_1" / "datastore"
    figure = new_figure()
    figure.subplots().plot(np.arange(5))
    urls = save_figures({"line": figure}, folder, storage, final)
    assert urls == {"line": "file:///operation_results/1/dataset_1/datastore/line.png"}
    assert (folder / "line.png").read_bytes().startswith(b"\x89PNG")
    final.parent.parent.mkdir(parents=True, exist_ok=True)
    folder.parent.rename(final.parent)
    assert url_to_path(urls["line"], storage).is_file()


def test_builtin_operations_make_their_figures(tmp_path: Path) -> None:
    from test_operations import apply, dataset

    source = dataset(tmp_path / "in")
    _, pca = apply("pca", source, {"matrix": "cell,gene#X", "components": 3})
    _, kmeans = apply("kmeans", source, {"matrix": "cell,gene#X", "clusters": 3}, seed=0)
    split, _ = apply("split", source, {"axis": "cell", "test_fraction": 0.5}, seed=0)
    _, centroid = apply(
        "nearest_centroid", Path(split.path), {"matrix": "cell,gene#X", "labels": "cell#type"}
    )
    made = {name: set(ctx.figures) for name, ctx in
            [("pca", pca), ("kmeans", kmeans), ("nearest_centroid", centroid)]}  # fmt: skip
    assert made == {
        "pca": {"explained_variance", "first_components"},
        "kmeans": {"cluster_sizes"},
        "nearest_centroid": {"confusion_matrix"},
    }
    (bars,) = kmeans.figures["cluster_sizes"].axes[0].containers
    assert sum(bar.get_height() for bar in bars) == 40  # every row in one cluster
    urls = save_figures(centroid.figures, tmp_path / "figures", tmp_path, tmp_path / "figures")
    assert (tmp_path / "figures" / "confusion_matrix.png").is_file() and len(urls) == 1


def test_report_shows_every_operation_in_its_workflow_graph_and_statistics(
    report: Path, tmp_path: Path
) -> None:
    """Every batch of every step is a job Snakemake knows, so its report draws every operation
    (canvas graphics, read off the screen) with the edges and runtimes of their jobs."""
    operations = ["standardize", "pca", "split", "nearest_centroid", "normalize", "log1p", "kmeans"]
    for page in ("Workflow", "Statistics"):
        for attempt in range(2):  # a loaded machine may shoot before the canvas is drawn
            shot = tmp_path / f"{page}_{attempt}.png"
            browse(report, [page], tmp_path, shot)
            seen = read_screen(shot)
            if all(fold(op) in seen for op in operations):
                break
        assert [op for op in operations if fold(op) not in seen] == [], seen


def test_report_lists_the_figures_operations_made(report: Path, tmp_path: Path) -> None:
    """pca's own figures (saved by its jobs beside the datastore) are in the chain's report."""
    listing = browse(report, ["digits", "pca"], tmp_path)
    assert "explained_variance - run 0,1,2 - first_half - components=10" in listing
    assert "first_components - run 0,1,2 - second_half - components=20" in listing


def test_report_shows_the_statistics_of_a_chain(report: Path, tmp_path: Path) -> None:
    """The digits chain's statistics file, under its chain's category, subcategory statistics,
    to open or download (a CSV file)."""
    listing = browse(report, ["digits", "statistics"], tmp_path)
    assert '<td class="p-1 pl-2 ">accuracy_by_components</td>' in listing
    (link,) = re.findall(r'href="data:text/csv;[^"]*?base64,([^"]+)"', listing)
    text = base64.b64decode(unquote(link)).decode()
    assert text.startswith("a,b,n,mean_difference,statistic,p,p_corrected\n10,20,6,")
