"""One command on a lent GPU machine: check the CUDA path, then train and evaluate the descriptors.

Run by ``benchmarks/gpu_run.sh`` (which sets up Python there). In one call, inside ``--budget-s``
seconds of wall time (default 450, so that the whole command stays inside 8 minutes):

1. **checks** (while the data is built): ``pytest -m gpu``, ``benchmarks/gpu_check.py`` (fp16
   patches/s, a warm ``Matcher`` loop, peak GPU memory) and ``featmatch match``, ``stitch`` and
   ``batch`` with ``--device cuda`` on bundled images;
2. **data**: the training patches from the TRAIN photos (all CPU cores), the TEST patch pairs and
   the validation pairs (TRAIN photos, other warps) — ``featmatch.train.datasets``, as ``featmatch
   train`` builds them;
3. **grid**: the Exp-TLoss ablation, every cell at once on the one GPU with the same wall-clock
   budget: beta x gamma in {1, 2, 3} (batch 512, mining 0.5) and batch {128, 256, 512} x mining
   ratio {1, 0.5, 0.25} (beta = gamma = 2); the shipped models are scored on the same pairs;
4. **finals**: HardNet (batch 1024) from the start of the grid on; Exp-TLoss with the recipe the
   grid chose *on the validation pairs* (never on the test pairs) once the grid is done;
5. **student**: a half-width network (a quarter of HardNet's multiply-adds) distilled from the new
   HardNet once that is done.

Every run is scored on the TEST patch pairs (FPR95, mAP) and the validation pairs. ``--out``
receives, as they happen, ``gpu_run.json`` (every figure, the stage timeline and where each
minute went), the weights of the finals and the student, and ``logs.tgz``: a command cut
short at its time limit still brings back what finished.

``--dry-run`` (with ``--device cpu``) runs the same code with tiny data and budgets on the CPU;
``tests/test_gpu_run.py`` runs it and checks the JSON.

Usage:
    python benchmarks/gpu_run.py --out DIR [--data-root DIR] [--device cuda] [--budget-s 450]
    python benchmarks/gpu_run.py --out DIR --device cpu --dry-run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: The Exp-TLoss grid: (beta, gamma) at the shipped batch and mining, then batch x mining at beta = gamma = 2.
#: Our mining ratio is the fraction of the hardest positives kept (1 = no hard positive mining).
BETA_GAMMA = [(b, g) for b in (1.0, 2.0, 3.0) for g in (1.0, 2.0, 3.0)]
BATCH_MINING = [(bs, mr) for bs in (128, 256, 512) for mr in (1.0, 0.5, 0.25)]
BASE_BATCH, BASE_MINING, BASE_BETA, BASE_GAMMA = 512, 0.5, 2.0, 2.0
FINAL_BATCH_HARDNET = 1024
STUDENT_WIDTH = 0.5


@dataclass(frozen=True)
class Plan:
    """Sizes and budgets of one run (``dry`` for the CPU plumbing check)."""

    budget_s: float = 450.0
    device: str = "cuda"
    dry: bool = False
    warps: int = 40
    max_keypoints: int = 4000
    max_photos: int | None = None
    data_workers: int = 12
    max_steps: int = 1_000_000
    grid_share: float = 0.3
    student_share: float = 0.3
    overhead_s: float = 25.0
    checks_timeout_s: float = 120.0
    beta_gamma: tuple = tuple(BETA_GAMMA)
    batch_mining: tuple = tuple(BATCH_MINING)
    batch_div: int = 1

    @classmethod
    def dry_run(cls, device: str = "cpu") -> Plan:
        """Tiny: 3 photos, 2 warps, 3 steps a run, two cells of each half of the grid, batches / 16."""
        return cls(budget_s=240.0, device=device, dry=True, warps=2, max_keypoints=300, max_photos=3, data_workers=2,
                   max_steps=3, overhead_s=5.0, checks_timeout_s=120.0, beta_gamma=((1.0, 1.0), (2.0, 2.0)),
                   batch_mining=((128, 1.0), (512, 0.5)), batch_div=16)

    def batch(self, size: int) -> int:
        return max(2, size // self.batch_div)


# --------------------------------------------------------------------------------------------
# the record written as it goes


class Record:
    """``gpu_run.json`` in ``out``: rewritten (atomically) after every event, with the stage timeline."""

    def __init__(self, out: Path, t0: float):
        self.out, self.t0 = out, t0
        self.lock = threading.Lock()
        self.data: dict = {"stages": {}, "runs": {}, "checks": {}, "minutes": []}

    def now(self) -> float:
        return round(time.time() - self.t0, 1)

    def save(self) -> None:
        with self.lock:
            self.data["elapsed_s"] = self.now()
            self.data["minutes"] = minute_summary(self.data["stages"], self.now())
            tmp = self.out / "gpu_run.json.tmp"
            tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
            tmp.replace(self.out / "gpu_run.json")

    def start(self, stage: str) -> None:
        with self.lock:
            self.data["stages"][stage] = {"start_s": self.now(), "end_s": None}
        log(f"[{self.now():6.1f} s] {stage} started")
        self.save()

    def end(self, stage: str, **extra) -> None:
        with self.lock:
            st = self.data["stages"].setdefault(stage, {"start_s": None})
            st.update(end_s=self.now(), **extra)
        log(f"[{self.now():6.1f} s] {stage} done {extra if extra else ''}")
        self.save()


def minute_summary(stages: dict, now: float) -> list[dict]:
    """For each minute of the run, the stages active in it and for how many seconds."""
    out = []
    for m in range(int(now // 60) + 1):
        lo, hi = 60.0 * m, min(60.0 * (m + 1), now)
        active = {}
        for name, st in stages.items():
            s, e = st.get("start_s"), st.get("end_s")
            if s is None:
                continue
            e = now if e is None else e
            overlap = min(hi, e) - max(lo, s)
            if overlap > 0.05:
                active[name] = round(overlap, 1)
        out.append({"minute": m + 1, "stages_s": active})
    return out


def log(msg: str) -> None:
    print(f"gpu_run: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# checks of the CUDA path (subprocesses)


def run_cmd(name: str, cmd: list[str], logs: Path, timeout: float, env: dict | None = None) -> dict:
    """Run ``cmd`` (stdout and stderr to ``logs/name.txt``): exit code, seconds, the last lines."""
    t0 = time.time()
    path = logs / f"{name}.txt"
    try:
        with open(path, "w") as f:
            proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, timeout=timeout, check=False,
                                  env={**os.environ, **(env or {})})
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    tail = path.read_text(errors="replace").strip().splitlines()[-4:] if path.is_file() else []
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.time() - t0, 1), "tail": tail}


def run_checks(plan: Plan, rec: Record, logs: Path, scratch: Path) -> None:
    """The CUDA tests, gpu_check.py's measurements and the three commands with ``--device``."""
    py = sys.executable
    dev = plan.device
    ev = REPO / "featmatch" / "evaldata"
    ex = REPO / "examples"
    gpu_json = logs / "gpu_check.json"
    cmds = {  # the measurement first, before the training runs share the GPU
        "gpu_check": [py, "benchmarks/gpu_check.py", "--out", str(gpu_json), "--device", dev]
        + (["--tiny"] if plan.dry else []),
        "pytest_gpu": [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py"],
        "match": [py, "-m", "featmatch.cli", "match", str(ev / "graf1.png"), str(ev / "graf3.png"),
                  "--descriptor", "hardnet", "--device", dev, "--json"],
        "stitch": [py, "-m", "featmatch.cli", "stitch", str(ex / "river"), "-o", str(scratch / "river.jpg"),
                   "--descriptor", "hardnet", "--device", dev],
        "batch": [py, "-m", "featmatch.cli", "batch", str(ev), "-o", str(scratch / "batch.jsonl"),
                  "--cache", str(scratch / "batch.h5"), "-d", "hardnet", "--device", dev, "--workers", "1"],
    }
    timeouts = {"gpu_check": plan.checks_timeout_s, "pytest_gpu": 0.6 * plan.checks_timeout_s}
    rec.start("checks")
    per = plan.checks_timeout_s
    for name, cmd in cmds.items():
        rec.data["checks"][name] = run_cmd(name, cmd, logs, timeouts.get(name, per / 2.5))
        if name == "gpu_check" and gpu_json.is_file():
            rec.data["checks"]["gpu_check"]["result"] = json.loads(gpu_json.read_text())
        rec.save()
    ok = all(c["rc"] == 0 for c in rec.data["checks"].values())
    rec.end("checks", ok=ok)


# --------------------------------------------------------------------------------------------
# data


def data_spec(plan: Plan, data_root: Path, cache: Path) -> dict:
    return {"data_root": str(data_root), "cache": str(cache), "warps": plan.warps, "max_keypoints": plan.max_keypoints,
            "max_photos": plan.max_photos, "workers": plan.data_workers, "dry": plan.dry}


def load_data(spec: dict, build: bool = False, train: bool = True):
    """(train dataset, test pairs, val pairs), from the cache (built there first when ``build``).

    ``train=False`` leaves the training set out (None): a run that only scores a weights file
    needs the pairs alone, not the ~530 MB of training patches.
    """
    from featmatch.train.datasets import (
        TestPairsConfig,
        WarpConfig,
        build_pairs,
        build_test_pairs,
        build_val_pairs,
        build_warp_dataset,
        test_photos,
        train_photos,
    )

    root, cache = Path(spec["data_root"]), Path(spec["cache"])
    photos = train_photos(root)[: spec["max_photos"]] if spec["max_photos"] else train_photos(root)
    warp = WarpConfig(warps_per_image=spec["warps"], max_keypoints=spec["max_keypoints"])
    ds = build_warp_dataset(photos, warp, cache_dir=cache, workers=spec["workers"] if build else 1) if train else None
    if spec["dry"]:  # tiny pairs: two test photos, one warp each; validation from one train photo
        small = TestPairsConfig(warps_per_photo=1, max_pairs_per_warp=200,
                                warp=dataclasses.replace(TestPairsConfig().warp, max_keypoints=spec["max_keypoints"]))
        test = build_pairs(test_photos(root)[:2], [], small, cache, tag="test-dry")
        val = build_pairs(photos[:1], [], dataclasses.replace(small, seed=777), cache, tag="val-dry")
    else:
        test = build_test_pairs(root, cache)
        val = build_val_pairs(root, cache)
    return ds, test, val


# --------------------------------------------------------------------------------------------
# one training run (a subprocess: --worker SPEC)


def score(model, pairs, device) -> dict:
    """FPR95 and mAP (over all pairs and per image pair) of ``model`` on labelled pairs."""
    from featmatch.train.metrics import describe_patches, fpr95, patch_map

    da = describe_patches(model, pairs.a, device=device, batch=8192)
    db = describe_patches(model, pairs.b, device=device, batch=8192)
    d = (da - db).norm(dim=1).numpy()
    lab = pairs.label.numpy()
    return {"fpr95": round(fpr95(d, lab), 5), "map": round(patch_map(d, lab), 5),
            "map_per_pair": round(patch_map(d, lab, pairs.source.numpy()), 5), "pairs": len(lab)}


def worker(spec: dict) -> int:
    """Train one configuration (or only score a weights file) and write ``result.json`` in its run folder."""
    import torch

    from featmatch.network import HardNet, read_state_dict, width_of_state
    from featmatch.train.loop import TrainConfig, train
    from featmatch.train.losses import LossConfig

    t0 = time.time()
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True
    device = torch.device(spec["device"])
    ds, test, val = load_data(spec["data"], train=not spec.get("weights"))
    out: dict = {"name": spec["name"], "spec": spec, "load_s": round(time.time() - t0, 1)}
    if spec.get("weights"):  # score a file
        state = read_state_dict(Path(spec["weights"]))
        model = HardNet(width=width_of_state(state))
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        model = model.to(device)
    else:
        cfg = TrainConfig(loss=LossConfig(**spec["loss"]), **spec["train"])
        res = train(ds, cfg, run_dir, out=run_dir / "weights.pt", progress=False)
        out.update(steps=res.steps, train_s=round(res.wall_s, 1), pairs_seen=res.steps * cfg.batch_size,
                   last_loss=round(res.last_loss, 5), fp16_max_abs_diff=res.fp16_max_abs_diff,
                   weights=str(run_dir / "weights.pt"), steps_per_s=round(res.steps / max(res.wall_s, 1e-9), 1))
        state = read_state_dict(run_dir / "weights.pt")  # score what ships: the fp16 file, loaded as fp32
        model = HardNet(width=width_of_state(state))
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        model = model.to(device)
    model.eval()
    out["test"] = score(model, test, device)
    out["val"] = score(model, val, device)
    out["wall_s"] = round(time.time() - t0, 1)
    tmp = run_dir / "result.json.tmp"
    tmp.write_text(json.dumps(out, indent=2, default=str) + "\n")
    tmp.replace(run_dir / "result.json")
    return 0


# --------------------------------------------------------------------------------------------
# the orchestra


class Runs:
    """Training subprocesses: launched with a spec, polled until they write ``result.json``."""

    def __init__(self, rec: Record, root: Path, logs: Path, plan: Plan, data: dict):
        self.rec, self.root, self.logs, self.plan, self.data = rec, root, logs, plan, data
        self.procs: dict[str, tuple[subprocess.Popen, Path, float]] = {}

    def launch(self, name: str, loss: dict | None = None, seconds: float = 0.0, weights: str | None = None,
               **train) -> None:
        run_dir = self.root / name
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = {"name": name, "run_dir": str(run_dir), "device": self.plan.device, "data": self.data}
        if weights:
            spec["weights"] = weights
        else:
            minutes = max(seconds, 1.0) / 60.0
            spec["loss"] = loss
            spec["train"] = {"steps": self.plan.max_steps, "minutes": minutes, "checkpoint_every": 10**9,
                             "val_every": 0, "device": self.plan.device, "seed": 0, **train}
        (run_dir / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
        logf = open(self.logs / f"run-{name}.txt", "w")
        proc = subprocess.Popen([sys.executable, __file__, "--worker", str(run_dir / "spec.json")], cwd=REPO,
                                stdout=logf, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        self.procs[name] = (proc, run_dir, time.time())
        self.rec.data["runs"][name] = {"status": "running", "start_s": self.rec.now(),
                                       "budget_s": None if weights else round(seconds, 1)}
        self.rec.save()

    def poll(self) -> list[str]:
        """Names of the runs that ended since the last poll (their results are in the record)."""
        done = []
        for name, (proc, run_dir, _) in list(self.procs.items()):
            if proc.poll() is None:
                continue
            del self.procs[name]
            r = self.rec.data["runs"][name]
            r["end_s"] = self.rec.now()
            result = run_dir / "result.json"
            if proc.returncode == 0 and result.is_file():
                r.update(json.loads(result.read_text()), status="done")
                r.pop("spec", None)
            else:
                r.update(status="failed", rc=proc.returncode,
                         tail=(self.logs / f"run-{name}.txt").read_text(errors="replace").splitlines()[-6:])
            log(f"[{self.rec.now():6.1f} s] run {name}: {r['status']}"
                + (f" test FPR95 {r['test']['fpr95']:.4f} mAP {r['test']['map']:.4f} ({r.get('steps', '-')} steps)"
                   if r["status"] == "done" else f" (rc {proc.returncode})"))
            done.append(name)
        if done:
            self.rec.save()
        return done

    def kill_all(self) -> None:
        for proc, _, _ in self.procs.values():
            proc.kill()


def ok(rec: Record, name: str) -> bool:
    return rec.data["runs"].get(name, {}).get("status") == "done"


def choose_recipe(rec: Record, plan: Plan) -> dict:
    """The Exp-TLoss recipe from the grid, by validation FPR95 (the test pairs are never used to choose)."""
    def val(name: str) -> float:
        return rec.data["runs"][name]["val"]["fpr95"] if ok(rec, name) else float("inf")

    bg = [(val(f"bg-b{b:g}-g{g:g}"), b, g) for b, g in plan.beta_gamma]
    bm = [(val(f"bm-bs{bs}-mr{mr:g}"), bs, mr) for bs, mr in plan.batch_mining]
    _, beta, gamma = min(bg) if min(bg)[0] < float("inf") else (0, BASE_BETA, BASE_GAMMA)
    _, bs, mr = min(bm) if min(bm)[0] < float("inf") else (0, BASE_BATCH, BASE_MINING)
    return {"beta": beta, "gamma": gamma, "batch_size": bs, "mining_ratio": mr}


def publish(rec: Record, runs_root: Path, out: Path, name: str, filename: str) -> None:
    """Copy a finished run's weights into ``out`` at once (a cut-short command still brings them back)."""
    src = runs_root / name / "weights.pt"
    if ok(rec, name) and src.is_file():
        shutil.copy2(src, out / filename)
        rec.data.setdefault("published", {})[filename] = name
        rec.save()


def pack_logs(logs: Path, runs_root: Path, out: Path) -> None:
    """``logs.tgz``: the command logs and every run's log.jsonl / summary.json / result.json."""
    tmp = out / "logs.tgz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(logs, arcname="logs")
        for run in sorted(runs_root.glob("*")):
            for f in ("log.jsonl", "summary.json", "result.json", "spec.json", "train.log"):
                if (run / f).is_file():
                    tar.add(run / f, arcname=f"runs/{run.name}/{f}")
    tmp.replace(out / "logs.tgz")


def orchestrate(plan: Plan, data_root: Path, out: Path, work: Path) -> int:
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    logs, runs_root, cache, scratch = work / "logs", work / "runs", work / "cache", work / "scratch"
    for d in (logs, runs_root, cache, scratch):
        d.mkdir(parents=True, exist_ok=True)
    rec = Record(out, t0)
    rec.data["plan"] = dataclasses.asdict(plan)
    rec.data["info"] = machine_info(plan.device)
    rec.save()
    deadline = plan.budget_s

    # 1 + 2: checks in a thread while the data is built in a subprocess (all but a few cores)
    checks = threading.Thread(target=run_checks, args=(plan, rec, logs, scratch), daemon=True)
    checks.start()
    data = data_spec(plan, data_root, cache)
    rec.start("data")
    (work / "data.json").write_text(json.dumps(data))
    res = run_cmd("data", [sys.executable, __file__, "--build-data", str(work / "data.json")], logs,
                  timeout=max(30.0, deadline - rec.now() - 60))
    rec.end("data", **{k: res[k] for k in ("rc", "seconds", "tail")})
    if res["rc"] != 0:
        log("the data could not be built; only the checks ran")
        checks.join(timeout=max(0.0, deadline - rec.now()))
        pack_logs(logs, runs_root, out)
        rec.save()
        return 1
    for line in res["tail"]:
        if line.startswith("{"):
            rec.data["data"] = json.loads(line)
    rec.save()

    # 3 + 4: baselines, grid and the HardNet final at once
    runs = Runs(rec, runs_root, logs, plan, data)
    t_data = rec.now()
    remaining = max(30.0, deadline - t_data - plan.overhead_s)
    grid_s = max(10.0, plan.grid_share * remaining)
    student_s = max(10.0, plan.student_share * remaining)
    hardnet_s = max(10.0, remaining - student_s - plan.overhead_s)
    rec.data["budgets_s"] = {"grid_cell": round(grid_s, 1), "hardnet": round(hardnet_s, 1),
                             "student": round(student_s, 1), "after_data_s": round(remaining, 1)}
    rec.start("grid")
    for name in ("hardnet", "exptloss"):
        shipped = REPO / "models" / f"{name}.pt"
        if shipped.is_file():
            runs.launch(f"shipped-{name}", weights=str(shipped))
    rec.start("final-hardnet")
    runs.launch("final-hardnet", loss={"name": "hardnet"}, seconds=hardnet_s,
                batch_size=plan.batch(FINAL_BATCH_HARDNET))
    for b, g in plan.beta_gamma:
        runs.launch(f"bg-b{b:g}-g{g:g}", loss={"name": "exptloss", "beta": b, "gamma": g, "alpha": 1.0,
                                             "mining_ratio": BASE_MINING}, seconds=grid_s,
                    batch_size=plan.batch(BASE_BATCH))
    for bs, mr in plan.batch_mining:
        if (bs, mr) == (BASE_BATCH, BASE_MINING) and (BASE_BETA, BASE_GAMMA) in plan.beta_gamma:
            continue  # the same cell as bg-b2-g2
        runs.launch(f"bm-bs{bs}-mr{mr:g}", loss={"name": "exptloss", "beta": BASE_BETA, "gamma": BASE_GAMMA,
                                               "alpha": 1.0, "mining_ratio": mr}, seconds=grid_s,
                    batch_size=plan.batch(bs))
    grid_names = {n for n in runs.procs if n.startswith(("bg-", "bm-"))}
    started_exptloss = started_student = False
    last_print = 0.0
    try:
        while runs.procs or not (started_exptloss and started_student):
            time.sleep(0.5)
            finished = runs.poll()
            # the base cell doubles as the batch x mining cell (512, 0.5)
            if "bg-b2-g2" in finished:
                rec.data["runs"]["bm-bs512-mr0.5"] = {"same_as": "bg-b2-g2", **rec.data["runs"]["bg-b2-g2"]}
            if not started_exptloss and not (grid_names & set(runs.procs)):
                rec.end("grid")
                recipe = choose_recipe(rec, plan)
                rec.data["exptloss_recipe"] = {**recipe, "chosen_by": "validation FPR95"}
                left = max(10.0, deadline - rec.now() - plan.overhead_s)
                rec.start("final-exptloss")
                runs.launch("final-exptloss", loss={"name": "exptloss", "beta": recipe["beta"],
                                                    "gamma": recipe["gamma"], "alpha": 1.0,
                                                    "mining_ratio": recipe["mining_ratio"]},
                            seconds=left, batch_size=plan.batch(recipe["batch_size"]))
                started_exptloss = True
            if not started_student and "final-hardnet" not in runs.procs:
                rec.end("final-hardnet", ok=ok(rec, "final-hardnet"))
                publish(rec, runs_root, out, "final-hardnet", "hardnet.pt")
                teacher = runs_root / "final-hardnet" / "weights.pt"
                if not teacher.is_file():
                    teacher = REPO / "models" / "hardnet.pt"
                left = max(10.0, deadline - rec.now() - plan.overhead_s)
                rec.start("student")
                runs.launch("student", loss={"name": "hardnet"}, seconds=left, batch_size=plan.batch(FINAL_BATCH_HARDNET),
                            width=STUDENT_WIDTH, teacher=str(teacher))
                rec.data["runs"]["student"]["teacher"] = str(teacher.relative_to(work.parent)
                                                             if teacher.is_relative_to(work.parent) else teacher.name)
                started_student = True
            if "final-exptloss" in finished:
                rec.end("final-exptloss", ok=ok(rec, "final-exptloss"))
                publish(rec, runs_root, out, "final-exptloss", "exptloss.pt")
            if "student" in finished:
                rec.end("student", ok=ok(rec, "student"))
                publish(rec, runs_root, out, "student", "hardnet-half.pt")
            if finished:
                pack_logs(logs, runs_root, out)
            if rec.now() - last_print >= 30:
                last_print = rec.now()
                log(f"[{rec.now():6.1f} s] running: {', '.join(sorted(runs.procs)) or '-'}")
            if rec.now() > deadline + 60:  # a run that ignores its budget must not eat the command's limit
                log("past the deadline: stopping the runs still going")
                runs.kill_all()
                break
    finally:
        runs.kill_all()
    checks.join(timeout=max(1.0, deadline + 30 - rec.now()))
    summarize(rec, plan)
    pack_logs(logs, runs_root, out)
    rec.save()
    print_timeline(rec)
    return 0


def summarize(rec: Record, plan: Plan) -> None:
    """The headline figures: each final against the shipped model, and the grid as a table."""
    runs = rec.data["runs"]
    head = {}
    for name in ("shipped-hardnet", "shipped-exptloss", "final-hardnet", "final-exptloss", "student"):
        r = runs.get(name, {})
        if r.get("status") == "done":
            head[name] = {"test_fpr95": r["test"]["fpr95"], "test_map": r["test"]["map"],
                          "val_fpr95": r["val"]["fpr95"], "steps": r.get("steps"), "pairs_seen": r.get("pairs_seen"),
                          "train_s": r.get("train_s")}
    rec.data["summary"] = head
    table = []
    for b, g in plan.beta_gamma:
        r = runs.get(f"bg-b{b:g}-g{g:g}", {})
        table.append({"beta": b, "gamma": g, **_cell(r)})
    rec.data["grid_beta_gamma"] = table
    table = []
    for bs, mr in plan.batch_mining:
        r = runs.get(f"bm-bs{bs}-mr{mr:g}", {})
        table.append({"batch": bs, "mining_ratio": mr, **_cell(r)})
    rec.data["grid_batch_mining"] = table


def _cell(r: dict) -> dict:
    if r.get("status") != "done":
        return {"status": r.get("status", "missing")}
    return {"test_fpr95": r["test"]["fpr95"], "test_map": r["test"]["map"], "val_fpr95": r["val"]["fpr95"],
            "steps": r.get("steps"), "pairs_seen": r.get("pairs_seen")}


def print_timeline(rec: Record) -> None:
    log("where the time went (seconds from the start):")
    for name, st in rec.data["stages"].items():
        log(f"  {name:16s} {st.get('start_s')} -> {st.get('end_s')}")
    for m in rec.data["minutes"]:
        log(f"  minute {m['minute']}: " + ", ".join(f"{k} {v:g} s" for k, v in m["stages_s"].items()))
    for name, r in rec.data.get("summary", {}).items():
        log(f"  {name:16s} test FPR95 {r['test_fpr95']:.4f} mAP {r['test_map']:.4f} val FPR95 {r['val_fpr95']:.4f}"
            f" ({r['steps'] or '-'} steps, {r['pairs_seen'] or '-'} pairs)")


def machine_info(device: str) -> dict:
    import torch

    info = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cpus": os.cpu_count(), "device": device}
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import cv2

        info["opencv"] = cv2.__version__
    except ImportError:
        pass
    return info


def build_data(spec_path: Path) -> int:
    """``--build-data``: build (and cache) the dataset and the pairs; print their sizes as JSON."""
    t0 = time.time()
    spec = json.loads(spec_path.read_text())
    ds, test, val = load_data(spec, build=True)
    print(json.dumps({"patches": len(ds), "points": ds.num_points, "test_pairs": len(test),
                      "test_positives": int(test.label.sum()), "val_pairs": len(val), "seconds": round(time.time() - t0, 1)}))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="folder for gpu_run.json, the weights and logs.tgz")
    p.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data",
                   help="the shared data layout (wallpaper-photos/, skimage-photos/, opencv-samples/)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder [default: OUT/../gpu_run_work]")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--budget-s", type=float, default=None, help="wall-clock budget of the whole run")
    p.add_argument("--dry-run", action="store_true", help="tiny data and budgets: the plumbing (CPU, tests)")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--build-data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.worker and not args.build_data and args.out is None:
        p.error("--out is required")
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    plan = Plan.dry_run(args.device) if args.dry_run else Plan(device=args.device,
                                                               data_workers=max(1, (os.cpu_count() or 2) - 4))
    if args.budget_s is not None:
        plan = dataclasses.replace(plan, budget_s=args.budget_s)
    return plan


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker.read_text()))
    if args.build_data:
        return build_data(args.build_data)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            log("no CUDA GPU is usable here (torch.cuda.is_available() is False); --device cpu --dry-run tests the plumbing")
            return 2
    work = args.work or args.out.resolve().parent / "gpu_run_work"
    return orchestrate(make_plan(args), args.data_root.resolve(), args.out.resolve(), work.resolve())


if __name__ == "__main__":
    sys.exit(main())
