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


@operation("boom", parameters={})
def boom(data, params, ctx):
    copy_axes(data, ctx.output)
    return 1 / 0
