"""User operations for the end-to-end tests, named in specs as myops:<function>."""

import os
import time

import numpy as np

from opchain import operation


def copy_axes(data, out):
    for axis in data.axis_names():
        out.create_axis(axis, data.axis_entries(axis))


@operation("add", parameters={"value": {"type": "number"}}, required=("value",))
def add(data, params, ctx):
    copy_axes(data, ctx.output)
    ctx.output.set_data2d("row,col#x", np.asarray(data.get_data2d("row,col#x")) + params["value"])


@operation("jitter", random=True, parameters={"scale": {"type": "number", "default": 1.0}})
def jitter(data, params, ctx):
    x = np.asarray(data.get_data2d("row,col#x"))
    noise = params["scale"] * ctx.rng.standard_normal(x.shape)
    copy_axes(data, ctx.output)
    ctx.output.set_data2d("row,col#x", x + noise)
    ctx.results["noise_mean"] = float(noise.mean())
    ctx.datastore["noise"] = noise


@operation(
    "slow",
    parameters={"seconds": {"type": "number", "default": 30}},
    resources={"mem_mb": 1234, "runtime": 7},
)
def slow(data, params, ctx):
    copy_axes(data, ctx.output)
    ctx.output.set_data2d("row,col#x", np.asarray(data.get_data2d("row,col#x")))
    time.sleep(float(os.environ.get("SLOW_SECONDS", params["seconds"])))  # a test's kill window
    ctx.results["threads"] = ctx.threads  # the cores it was given for its own arithmetic


@operation("boom", parameters={})
def boom(data, params, ctx):
    copy_axes(data, ctx.output)
    return 1 / 0


@operation("flaky", parameters={})
def flaky(data, params, ctx):
    """Fails the first time it runs in a project (a node lost mid-job), then works."""
    attempted = os.path.join(os.environ["FLAKY_DIR"], "attempted")
    if not os.path.exists(attempted):
        open(attempted, "w").close()
        raise RuntimeError("the first attempt fails")
    copy_axes(data, ctx.output)
    ctx.output.set_data2d("row,col#x", np.asarray(data.get_data2d("row,col#x")))


@operation("transfer", combine="pairs", parameters={})
def transfer(data, params, ctx):
    """Train on X, evaluate on Y without pooling: the distance between their mean rows. Records
    each call (its combination's name) in $CALLS_FILE, so tests count computations."""
    calls = os.environ.get("CALLS_FILE")
    if calls:
        with open(calls, "a") as log:
            log.write(ctx.combination["name"] + "\n")
    (train,), (test,) = ctx.combination["train"], ctx.combination["test"]
    means = {name: np.asarray(data[name].get_data2d("row,col#x")).mean(axis=0) for name in data}
    copy_axes(data[test], ctx.output)
    ctx.output.set_data2d("row,col#x", np.asarray(data[test].get_data2d("row,col#x")))
    ctx.results["distance"] = float(np.linalg.norm(means[train] - means[test]))
