"""``opchain show PATH``: what a result is, where it comes from, and what data it holds.

PATH is a result dataset (``dataset_<k>``), a step directory (all its datasets) or a chain
directory (its compiled chain and history). For a dataset: operation, parameters, run and seed,
scores, datastore values, every ancestor back to the input files (one line per hop; a combination's
every member with its own ancestors, indented below it) and a summary of its data (axes and sizes; 1D/2D data with dtype, shape and, for sparse data, density).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from opchain.daf import open_reader
from opchain.datastore import DataStore
from opchain.errors import OpchainError
from opchain.table import history_versions, lineage, name_time

__all__ = ["describe", "show_text"]


def storage_of(path: Path, metadata: dict[str, Any]) -> Path:
    """The storage root of a result dataset, from the path its metadata records."""
    return path.resolve().parents[len(Path(metadata["output"]).parts) - 1]


def value_summary(value: Any) -> Any:
    """A datastore value as a line: arrays by dtype and shape, small plain values as they are."""
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        return f"array {value.dtype} {list(shape)}"
    text = json.dumps(value, default=repr)
    return value if len(text) <= 200 else f"{type(value).__name__} of {len(value)} entries"


def data_summary(path: Path) -> dict[str, Any]:
    description = open_reader(path).description()
    for entry in description["data2d"].values():
        if "nnz" in entry:
            rows, columns = entry["shape"]
            entry["density"] = round(entry["nnz"] / max(rows * columns, 1), 6)
    return {k: description[k] for k in ("format", "axes", "items", "data1d", "data2d")}


def describe_dataset(path: Path) -> dict[str, Any]:
    try:
        metadata = yaml.safe_load((path / "metadata.yaml").read_text(encoding="utf-8"))
        storage = storage_of(path, metadata)
    except (OSError, yaml.YAMLError, TypeError, KeyError) as error:
        raise OpchainError(f"{path}: not an opchain result ({error})") from None
    store = DataStore.load(metadata.get("datastore") or {}, storage)
    values = {}
    for name, url in (metadata.get("datastore") or {}).items():
        try:
            values[name] = {"url": url, "value": value_summary(store[name])}
        except OpchainError as error:  # a pickle, which show never unpickles
            values[name] = {"url": url, "value": str(error)}
    return {
        "kind": "dataset",
        "path": metadata["output"],
        "operation": metadata["operation"],
        "parameters": metadata.get("parameters") or {},
        "run": metadata.get("run"),
        "seed": metadata.get("seed"),
        "scores": metadata.get("results") or {},
        "datastore": values,
        "figures": metadata.get("figures") or {},
        "computed_in": metadata.get("computed_in"),
        "combination": metadata.get("combination"),
        "lineage": ancestors(storage, metadata, {}),
        "data": data_summary(path),
    }


def ancestors(storage: Path, metadata: dict[str, Any], cache: dict[str, Any]) -> list[dict]:
    """The hops from a result's input up to the input files; a combination's hop lists the
    lineage of each of its members under ``inputs``."""
    if metadata.get("inputs"):  # a combination: each member's own lineage
        return [
            {"member": name, "lineage": hops(storage, dataset, cache)}
            for name, dataset in metadata["inputs"].items()
        ]
    return hops(storage, metadata["input"], cache)


def hops(storage: Path, dataset: str, cache: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for name, meta in lineage(storage, dataset, cache):
        if meta is None:
            found.append({"dataset": name, "input": True})
            break
        hop = {"dataset": name, "operation": meta["operation"], "parameters": meta["parameters"]}
        found.append(hop)
        if meta.get("inputs"):
            hop["combination"] = meta["combination"]["name"]
            hop["inputs"] = ancestors(storage, meta, cache)
            break
    return found


def describe(path: Path) -> dict[str, Any]:
    """What ``opchain show --json`` prints for ``path``."""
    if (path / "metadata.yaml").is_file():
        return describe_dataset(path)
    if (path / "chain.yaml").is_file():
        manifest = yaml.safe_load((path / "chain.yaml").read_text(encoding="utf-8"))
        return {
            "kind": "chain",
            "path": str(path),
            "chain": manifest["chain"],
            "spec": manifest.get("spec"),
            "input_path": manifest.get("input_path"),
            "history": [p.stem for p in history_versions(path)],
            "runs": [
                {
                    "run": run["run"],
                    "seed": run["seed"],
                    "steps": [
                        {
                            "step": i,
                            "operation": s["operation"],
                            "dir": s["dir"],
                            "datasets": s["datasets"],
                        }
                        for i, s in enumerate(run["steps"], start=1)
                    ],
                }
                for run in manifest["runs"]
            ],
        }
    datasets = sorted(path.glob("dataset_*/metadata.yaml"), key=lambda p: name_time(p.parent.name))
    if not datasets:
        raise OpchainError(f"{path}: not a result dataset, step directory or chain directory")
    return {
        "kind": "step",
        "path": str(path),
        "datasets": [describe_dataset(p.parent) for p in datasets],
    }


def _params(parameters: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in parameters.items())


def dataset_lines(info: dict[str, Any]) -> list[str]:
    lines = [
        f"{info['path']}",
        f"  operation   {info['operation']}  ({_params(info['parameters'])})",
        f"  run {info['run']}, seed {info['seed']}",
        f"  scores      {_params(info['scores']) or '-'}",
    ]
    if info["computed_in"]:
        lines.append(f"  computed in {info['computed_in']} (hard-linked)")
    lines += [f"  datastore   {k}: {v['value']}" for k, v in info["datastore"].items()]
    lines += [f"  figure      {k}: {v}" for k, v in info["figures"].items()]
    if info["combination"]:
        combination = info["combination"]
        roles = f"train {', '.join(combination['train'])}; test {', '.join(combination['test'])}"
        lines.append(f"  combination {combination['name']}  ({roles})")
    lines.append("  lineage")
    lines += lineage_lines(info["lineage"], "    ")
    data = info["data"]
    lines.append(f"  data ({data['format']})  axes: {_params(data['axes'])}")
    for name, entry in {**data["data1d"], **data["data2d"]}.items():
        shape = " x ".join(map(str, entry["shape"]))
        sparse = f", sparse, density {entry['density']:.4g}" if "density" in entry else ""
        lines.append(f"    {name}: {entry['dtype']} {shape}{sparse}")
    return lines


def lineage_lines(hops: list[dict[str, Any]], indent: str) -> list[str]:
    lines = []
    for hop in hops:
        if "member" in hop:
            lines.append(f"{indent}{hop['member']}:")
            lines += lineage_lines(hop["lineage"], indent + "  ")
        elif hop.get("input"):
            lines.append(f"{indent}<- {hop['dataset']}  (input)")
        else:
            combination = f"  = {hop['combination']}" if "combination" in hop else ""
            params = _params(hop["parameters"])
            lines.append(f"{indent}<- {hop['dataset']}  {hop['operation']} ({params}){combination}")
            lines += lineage_lines(hop.get("inputs", []), indent + "  ")
    return lines


def show_text(path: Path, *, as_json: bool) -> str:
    """``opchain show``: the description of ``path`` as text or JSON."""
    info = describe(path)
    if as_json:
        return json.dumps(info, indent=2, default=str) + "\n"
    if info["kind"] == "dataset":
        lines = dataset_lines(info)
    elif info["kind"] == "step":
        lines = [line for d in info["datasets"] for line in dataset_lines(d)]
    else:
        lines = [
            f"chain {info['chain']} ({info['spec']}) on {info['input_path']}: {info['path']}",
            f"  versions (history/): {', '.join(info['history']) or '-'}",
        ]
        for run in info["runs"]:
            lines.append(f"  run {run['run']} (seed {run['seed']})")
            lines += [
                f"    step {s['step']} {s['operation']:<16} {s['dir']} ({s['datasets']} datasets)"
                for s in run["steps"]
            ]
    return "\n".join(lines) + "\n"
