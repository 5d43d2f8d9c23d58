"""Figures: those operations make (``ctx.figures``) and those of a chain's Snakemake report.

matplotlib is imported only when a figure is made: a job that makes none does not pay for it.
Figures are ``matplotlib.figure.Figure`` objects drawn without pyplot (no global state, no GUI
backend: saving renders with Agg).

The report of a chain (rule ``chain_report``, ``workflow/rules/report.smk``) is made from its
``results.csv``: ``results.html`` (the summary over runs, then every row) and, under ``figures/``,
one PNG per operation, score and swept parameter (``<operation>/<score> by <parameter>.png``: mean
± std over the runs against the parameter, one line per input dataset and setting of the other
swept parameters), plus a copy of every figure the chain's operations made
(``<operation>/<figure> - run <r> - <input> - <swept parameters>.png``).
"""

from __future__ import annotations

import os
import shutil
from html import escape
from pathlib import Path
from typing import Any

from opchain.datastore import path_to_url, url_to_path

__all__ = ["build_report", "new_figure", "save_figures"]


def new_figure(width: float = 5.0, height: float = 3.5) -> Any:
    """A matplotlib Figure (imports matplotlib on first use; no pyplot, no display needed)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figures(
    figures: dict[str, Any], folder: Path, storage: Path, final_folder: Path
) -> dict[str, str]:
    """Save each figure as ``folder/<name>.png``; return ``{name: url}`` with URLs naming
    ``final_folder`` (where ``folder`` will be once its dataset is renamed into place)."""
    folder.mkdir(parents=True, exist_ok=True)
    urls = {}
    for name, figure in figures.items():
        figure.savefig(folder / f"{name}.png", dpi=100, metadata={"Software": None})
        urls[name] = path_to_url(final_folder / f"{name}.png", storage)
    return urls


def swept(rows: Any) -> list[str]:
    """The parameter columns that take more than one value among ``rows``."""
    return [c for c in rows if c.startswith("param.") and rows[c].nunique(dropna=False) > 1]


def label(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('param.')}={v}" for k, v in values.items())


def score_figures(table: Any, out: Path) -> None:
    """``<operation>/<score> by <parameter>.png`` for every score and swept parameter."""
    table = table.drop_duplicates(["step_dir", "dataset"])
    for (step, operation), rows in table.groupby(["step", "operation"]):
        params = swept(rows)
        scores = [c for c in rows if c.startswith("score.") and rows[c].notna().any()]
        for score in scores:
            for param in params:
                others = [p for p in params if p != param]
                figure = new_figure()
                axes = figure.subplots()
                for key, line in rows.groupby(["input", *others], dropna=False, sort=True):
                    stats = line.groupby(param)[score].agg(["mean", "std", "count"])
                    name = Path(key[0]).name
                    if others:
                        name += f" ({label(dict(zip(others, key[1:], strict=True)))})"
                    x = [str(v) for v in stats.index]
                    axes.errorbar(x, stats["mean"], yerr=stats["std"].fillna(0), marker="o",
                                  capsize=4, label=name)  # fmt: skip
                runs = int(rows["run"].nunique())
                axes.set(xlabel=param.removeprefix("param."), ylabel=score.removeprefix("score."))
                axes.set_title(
                    f"step {step} {operation}: mean ± std over {runs} run(s)", fontsize=9
                )
                axes.legend(fontsize=8)
                folder = out / operation
                folder.mkdir(parents=True, exist_ok=True)
                name = f"{score.removeprefix('score.')} by {param.removeprefix('param.')}.png"
                figure.savefig(folder / name, dpi=100, metadata={"Software": None})


NO_FIGURES = "\nfigures: {}\n"  # the line of a result without figures in its metadata.yaml


def operation_figures(table: Any, storage: Path, out: Path) -> None:
    """Link (or copy) every figure the chain's operations made into ``<operation>/``."""
    from opchain.table import read_metadata  # not at import: jobs making figures need none

    keys = ["step_dir", "dataset"]
    results = table.drop_duplicates(keys)
    # Most operations draw nothing, and their metadata says so in one line (an empty mapping, as
    # table.dump_yaml writes it): a sweep's thousand files need no parsing, nor its rows more.
    drawn = [
        NO_FIGURES not in (storage / f"{step_dir}/{dataset}/metadata.yaml").read_text("utf-8")
        for step_dir, dataset in zip(results["step_dir"], results["dataset"], strict=True)
    ]
    if not any(drawn):
        return
    results = results[drawn]
    params_of = {op: swept(rows) for op, rows in table.groupby("operation")}
    of_drawn = table.set_index(keys).index.isin(results.set_index(keys).index)
    runs = table[of_drawn].groupby(keys)["run"].agg(lambda r: ",".join(map(str, r)))
    for row in results.to_dict("records"):
        dataset = f"{row['step_dir']}/{row['dataset']}"
        figures = (read_metadata(storage, dataset) or {}).get("figures") or {}
        for name, url in figures.items():
            shared = runs[row["step_dir"], row["dataset"]]  # a deterministic step serves all runs
            parts = [name, f"run {shared}", Path(row["input"]).name]
            described = {p: row[p] for p in params_of[row["operation"]]}
            if described:
                parts.append(label(described))
            target = out / row["operation"] / f"{' - '.join(parts)}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(url_to_path(url, storage), target)
            except OSError:  # the storage root on another filesystem than the report
                shutil.copyfile(url_to_path(url, storage), target)


TABLE_STYLE = """<style>
body { font-family: sans-serif; font-size: 13px; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #eee; }
</style>"""


def results_html(table: Any, chain: str) -> str:
    # Not at import: jobs that make figures do not need these.
    from opchain.table import informative, summarize

    summary = informative(summarize(table))
    table = informative(table)
    return "\n".join(
        [
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{chain}</title>",
            TABLE_STYLE,
            "</head><body>",
            f"<h2>Chain {chain}: scores by step, parameters and input (mean, std, n over runs)</h2>",
            html_table(summary),
            f"<h2>Every result dataset ({len(table)} rows)</h2>",
            html_table(table),
            "</body></html>",
        ]
    )


def html_table(frame: Any) -> str:
    """``frame`` as an HTML table showing what pandas' ``to_html(index=False, na_rep="",
    float_format="{:.4g}".format)`` shows, written directly: pandas' writer takes ~0.3 ms a
    row, seconds for a sweep's table."""
    columns = [_cells(frame.iloc[:, at]) for at in range(frame.shape[1])]
    head = "".join(f"<th>{escape(str(name), quote=False)}</th>" for name in frame.columns)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
        for row in zip(*columns, strict=True)
    )
    return (
        '<table border="1" class="dataframe">\n<thead>\n<tr style="text-align: right;">'
        f"{head}</tr>\n</thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    )


def _cells(column: Any) -> list[str]:
    """A column's cells as pandas shows them: floats to 4 significant digits, NaN blank."""
    return [escape(_cell(value).strip(), quote=False) for value in column.tolist()]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    return str(value)


def build_report(results_csv: Path, storage: Path, table_html: Path, figures: Path) -> None:
    """The report files of one chain from its results.csv: the table and the figures."""
    from opchain.table import read_results

    table = read_results(results_csv)
    chain = str(table["chain"].iloc[0]) if len(table) else results_csv.parent.name
    table_html.write_text(results_html(table, chain), encoding="utf-8")
    if figures.exists():
        shutil.rmtree(figures)
    figures.mkdir(parents=True)
    score_figures(table, figures)
    operation_figures(table, storage, figures)
