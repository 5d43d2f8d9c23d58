"""Execute one job: read its input dataset, call the operation, write the result atomically.

The result directory is written whole under a hidden temporary name beside its final place (daf
data, ``datastore/``, ``metadata.yaml``, ``input_metadata.yaml``) and renamed into place only when
complete, so a failed or killed job leaves nothing that passes for a result. The step-level files
are shared by the step's jobs: ``operation.log`` gets each job's lines in one appending write, and
``source_operation.yaml`` is replaced atomically (every job of a step writes the same text).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from opchain import __version__
from opchain.atomic import aside_path, write_atomic
from opchain.daf import FilesWriter, open_reader
from opchain.datastore import DataStore
from opchain.errors import OpchainError
from opchain.operations import Context, get_operation

__all__ = ["main", "run_job", "versions", "write_manifest"]

H5_FILE = "data.h5"  # a result stored as HDF5 is <dataset dir>/data.h5


def versions(snakemake_version: str) -> dict[str, str]:
    """What a result records of the software that made it."""
    return {
        "opchain": __version__,
        "python": sys.version.split()[0],  # = platform.python_version(), without its import
        "numpy": np.__version__,
        "snakemake": snakemake_version,
    }


def now() -> str:
    return datetime.now(UTC).astimezone().isoformat(timespec="milliseconds")


def dump_yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False)


def run_job(spec: dict[str, Any], storage: Path, snakemake_version: str) -> Path:
    """Run the job ``spec`` (a plan Job's spec) and return its result directory."""
    output = storage / spec["output"]
    operation = get_operation(spec["type"])
    with _step_log(output, logging.getLogger(f"opchain.{output.parent.name}.{output.name}")) as log:
        started = now()
        log.info("%s %s on %s", spec["operation"], spec["parameters"], spec["input"])
        for leftover in output.parent.glob(f".{output.name}.tmp-*"):  # from a killed attempt
            shutil.rmtree(leftover, ignore_errors=True)
        temporary = aside_path(output)
        temporary.mkdir()
        try:
            results, urls = _compute(operation, spec, storage, temporary, output, log)
            metadata = {
                **{
                    k: spec[k]
                    for k in (
                        "operation",
                        "type",
                        "parameters",
                        "run",
                        "seed",
                        "fingerprint",
                        "input",
                        "output",
                        "format",
                    )
                },
                "results": results,
                "datastore": urls,
                "components": spec["components"],
                "versions": versions(snakemake_version),
                "host": os.uname().nodename,  # = socket.gethostname(), without its import
                "started": started,
                "finished": now(),
            }
            (temporary / "metadata.yaml").write_text(dump_yaml(metadata), encoding="utf-8")
            (temporary / "input_metadata.yaml").write_text(
                input_metadata(storage, spec["input"]), encoding="utf-8"
            )
            if output.exists():  # Snakemake removes outputs first; a hand-run job replaces them
                shutil.rmtree(output)
            os.rename(temporary, output)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        log.info("done: %s", ", ".join(f"{k}={v}" for k, v in results.items()) or "no scores")
    write_atomic(output.parent / "source_operation.yaml", source_operation(spec["source"]))
    return output


def _compute(
    operation: Any,
    spec: dict[str, Any],
    storage: Path,
    temporary: Path,
    output: Path,
    log: logging.Logger,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Call the operation into ``temporary``; return its scores and its datastore's final URLs."""
    data = open_reader(storage / spec["input"])
    if spec["format"] == "h5":
        from opchain.daf import H5Writer

        writer = H5Writer(temporary / H5_FILE, atomic=False)
    else:
        writer = FilesWriter(temporary, overwrite=True, atomic=False)
    context = Context(writer, DataStore(), log, spec["seed"], operation.random)
    operation.function(data, dict(spec["parameters"]), context)
    writer.close()
    # The values are written aside; their URLs name where the directory will be.
    urls = (
        context.datastore.save(temporary / "datastore", storage, final_folder=output / "datastore")
        if context.datastore
        else {}
    )
    return _plain(context.results), urls


def _plain(value: Any) -> Any:
    """Scores as plain YAML values (numpy scalars and arrays become Python numbers and lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value.tolist() if isinstance(value, np.generic | np.ndarray) else value


def input_metadata(storage: Path, dataset: str) -> str:
    """The input's own metadata.yaml, or a generated description of a raw dataset."""
    path = storage / dataset
    own = path / "metadata.yaml"
    if own.is_file():
        return own.read_text(encoding="utf-8")
    return dump_yaml({**open_reader(path).description(), "path": dataset})


def source_operation(source: dict[str, Any]) -> str:
    """The operation file this step was made from, with the chain's overrides noted on top."""
    path = Path(source["file"])
    header = f"# operation file: {path}\n"
    if source["overridden_params"]:
        header += f"# overridden_params (from the chain): {source['overridden_params']}\n"
    return header + path.read_text(encoding="utf-8")


@contextmanager
def _step_log(output: Path, log: logging.Logger) -> Iterator[logging.Logger]:
    """Collect this job's log lines and append them to the step's operation.log in one write."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
            lines.append(f"{stamp} {output.name} {record.levelname} {record.getMessage()}\n")

    handler = Collect()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield log
    except BaseException as error:
        log.error("failed: %s", error)
        raise
    finally:
        log.removeHandler(handler)
        fd = os.open(output.parent / "operation.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            os.write(fd, "".join(lines).encode())
        finally:
            os.close(fd)


def write_manifest(path: str, manifest_json: str) -> None:
    """Write chain.yaml (rule chain_manifest) from the plan's canonical JSON."""
    write_atomic(Path(path), dump_yaml(json.loads(manifest_json)))


def main(argv: list[str]) -> None:
    """``python -m opchain.run OUTPUT LOG SNAKEMAKE_VERSION SPEC_JSON``, rule step's command: run
    one job of the plan, logging to LOG. A plain process, not a ``script:`` job: not importing
    Snakemake saves each step as much start-up time as numpy costs it."""
    if len(argv) != 4:
        sys.exit("usage: python -m opchain.run OUTPUT LOG SNAKEMAKE_VERSION SPEC_JSON")
    output, log, snakemake_version, spec_json = argv
    spec = json.loads(spec_json)
    storage = Path(output).parents[len(Path(spec["output"]).parts) - 1]
    handler = logging.FileHandler(log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("opchain").addHandler(handler)
    try:
        run_job(spec, storage, snakemake_version)
    except OpchainError as error:  # a user error: one line in the log and on stderr, no traceback
        message = f"opchain: {spec['output']}: {error}"
        logging.getLogger("opchain").error(message)
        sys.exit(message)


if __name__ == "__main__":
    main(sys.argv[1:])
