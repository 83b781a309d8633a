"""benchmarks/gpu_run.sh (the one GPU command): its dry run on the CPU, and the pieces it relies on."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from .conftest import REPO, load_script

SCRIPT = REPO / "benchmarks" / "gpu_run.py"


def _module():
    return load_script(SCRIPT, "gpu_run")


def _macs(net: torch.nn.Module) -> int:
    """Multiply-adds of one 32x32 patch through the convolutions."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        total += out.numel() * mod.in_channels * mod.kernel_size[0] * mod.kernel_size[1] // mod.groups

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    net.eval()(torch.rand(1, 1, 32, 32))
    for h in handles:
        h.remove()
    return total


def test_half_width_network_is_a_quarter_of_the_work_and_loads_by_its_shape(tmp_path, monkeypatch):
    from featmatch.network import HardNet, load_weights, save_weights

    full, half = _macs(HardNet()), _macs(HardNet(width=0.5))
    assert 38e6 < full < 40e6  # HardNet's 39 M MAC per patch
    assert 0.24 < half / full < 0.28
    save_weights(HardNet(width=0.5), tmp_path / "small.pt")
    monkeypatch.setenv("FEATMATCH_MODELS", str(tmp_path))
    net = load_weights("small")
    assert net.features[0].out_channels == 16 and net(torch.rand(3, 1, 32, 32)).shape == (3, 128)


def test_distillation_loss_is_zero_for_a_perfect_student_and_grows_with_error():
    from featmatch.train.loop import distill_loss

    g = torch.Generator().manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(64, 128, generator=g), dim=1)
    tp = torch.nn.functional.normalize(t + 0.1 * torch.randn(64, 128, generator=g), dim=1)
    assert float(distill_loss(t, tp, t, tp)) < 1e-6
    near = distill_loss(torch.nn.functional.normalize(t + 0.05 * torch.randn(64, 128, generator=g), dim=1), tp, t, tp)
    far = distill_loss(torch.nn.functional.normalize(torch.randn(64, 128, generator=g), dim=1), tp, t, tp)
    assert 0 < float(near) < float(far)


def test_patch_rotation_turns_by_the_angle():
    from featmatch.train.loop import rotate_patches

    x = torch.zeros(2, 1, 32, 32)
    x[:, :, 4:8, 14:18] = 1.0  # a blob above the centre
    same = rotate_patches(x, torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    turned = rotate_patches(x, torch.tensor([90.0, -90.0]))
    rot = torch.rot90(x[0, 0], 1, dims=(0, 1))  # counter-clockwise: the blob goes to the left
    assert torch.equal((turned[0, 0] > 0.5), (rot > 0.5))
    assert torch.equal((turned[1, 0] > 0.5), (torch.rot90(x[0, 0], -1, dims=(0, 1)) > 0.5))


def test_minute_summary_splits_stages_by_minute():
    gr = _module()
    stages = {"data": {"start_s": 0.0, "end_s": 90.0}, "grid": {"start_s": 90.0, "end_s": None}}
    mins = gr.minute_summary(stages, now=130.0)
    assert mins == [{"minute": 1, "stages_s": {"data": 60.0}},
                    {"minute": 2, "stages_s": {"data": 30.0, "grid": 30.0}},
                    {"minute": 3, "stages_s": {"grid": 10.0}}]  # fmt: skip


def test_recipe_is_chosen_on_validation_never_on_test():
    gr = _module()
    plan = gr.Plan.dry_run()
    rec = gr.Record.__new__(gr.Record)
    runs = {}
    for b, g in plan.beta_gamma:  # the better validation score loses on test: validation must win
        good = (b, g) == (1.0, 1.0)
        runs[f"bg-b{b:g}-g{g:g}"] = {"status": "done", "val": {"fpr95": 0.01 if good else 0.02},
                                     "test": {"fpr95": 0.05 if good else 0.01}}
    for bs, mr in plan.batch_mining:
        runs[f"bm-bs{bs}-mr{mr:g}"] = {"status": "done", "val": {"fpr95": 0.01 if bs == 128 else 0.03},
                                       "test": {"fpr95": 0.0}}
    rec.data = {"runs": runs}
    assert gr.choose_recipe(rec, plan) == {"beta": 1.0, "gamma": 1.0, "batch_size": 128, "mining_ratio": 1.0}


@pytest.mark.slow
def test_dry_run_on_the_cpu_writes_every_figure(tmp_path, data_dir):
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "WORK": str(tmp_path / "work"), "FEATMATCH_GPU_DATA": str(data_dir)}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_run.sh"), "--device", "cpu", "--dry-run"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "where the time went" in proc.stderr
    files = {p.name for p in out.iterdir()}  # setup.txt too where wheels were installed
    assert {"exptloss.pt", "gpu_run.json", "hardnet-half.pt", "hardnet.pt", "logs.tgz"} <= files
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir())  # what the GPU tool brings back
    data = json.loads((out / "gpu_run.json").read_text())
    assert {k: v["rc"] for k, v in data["checks"].items()} == dict.fromkeys(
        ("pytest_gpu", "gpu_check", "match", "stitch", "batch"), 0)
    assert data["checks"]["gpu_check"]["result"]["patches"]["gpu_resident_per_s"] > 0
    assert data["data"]["patches"] > 0 and data["data"]["test_positives"] > 0
    for name in ("shipped-hardnet", "shipped-exptloss", "final-hardnet", "final-exptloss", "student"):
        r = data["runs"][name]
        assert r["status"] == "done", (name, r)
        assert 0.0 <= r["test"]["fpr95"] <= 1.0 and 0.0 < r["test"]["map"] <= 1.0 and 0.0 <= r["val"]["fpr95"] <= 1.0
    assert data["runs"]["final-hardnet"]["steps"] == 3 and data["runs"]["student"]["steps"] == 3
    cells = data["grid_beta_gamma"] + data["grid_batch_mining"]
    assert len(cells) == 4 and all("test_fpr95" in c for c in cells)
    assert data["exptloss_recipe"]["chosen_by"] == "validation FPR95"
    assert set(data["stages"]) == {"checks", "data", "grid", "final-hardnet", "final-exptloss", "student"}
    assert all(st["end_s"] is not None and st["end_s"] >= st["start_s"] for st in data["stages"].values())
    assert data["minutes"] and sum(data["minutes"][0]["stages_s"].values()) > 0
    from featmatch.network import read_state_dict, width_of_state

    assert width_of_state(read_state_dict(out / "hardnet-half.pt")) == 0.5
    assert width_of_state(read_state_dict(out / "hardnet.pt")) == 1.0
