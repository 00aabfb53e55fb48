"""Two gloo processes under torchrun train the same metanetwork as one process."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from gmn.data import ZooDataset


def _train(zoo, out, nproc):
    args = [sys.executable, "-m", "gmn.cli", "train", str(zoo), "--out", str(out), "--train-epochs", "3",
            "--hidden", "8", "--layers", "2", "--batch-size", "4", "--device", "cpu", "--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_file(out / "model.safetensors"), json.loads((out / "result.json").read_text())


def test_two_gloo_processes_equal_one(tiny_zoo, tmp_path):
    ZooDataset(tiny_zoo, targets=("test_acc", "gap"), progress=False)  # the cache both runs read
    single, single_result = _train(tiny_zoo, tmp_path / "one", 1)
    double, double_result = _train(tiny_zoo, tmp_path / "two", 2)
    assert single_result["world_size"] == 1 and double_result["world_size"] == 2
    assert single.keys() == double.keys()
    for k in single:
        torch.testing.assert_close(double[k], single[k], rtol=1e-4, atol=1e-5)
    for a, b in zip(single_result["history"], double_result["history"]):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4 * max(1.0, abs(a["train_loss"]))
