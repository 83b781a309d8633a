"""The training loop: seeded, resumable, bf16 autocast on CPU, CUDA when available.

Each step samples ``batch_size`` distinct point ids with two random patches each, augments the
pairs (flips shared by the two patches of a pair; small independent rotations and gamma /
noise changes per patch), and minimizes the configured loss with Adam and a linear learning
rate decay to zero over ``steps`` (or over ``minutes`` when that cap comes first). A checkpoint (model, optimizer, step, elapsed time, every RNG
state) is written to ``<run_dir>/checkpoint.pt`` every ``checkpoint_every`` steps and at the end, so
an interrupted run resumes where it stopped and reaches the same weights as an uninterrupted
one (up to floating-point nondeterminism of the kernels). The final fp16 weights go to ``out``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DeviceError
from ..network import HardNet, save_weights
from .datasets import PairSet, PatchDataset
from .losses import LossConfig, compute_loss
from .metrics import describe_patches, fpr95

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
SUMMARY_NAME = "summary.json"


@dataclass(frozen=True)
class TrainConfig:
    """Options of one training run.

    Attributes:
        loss: the loss and its knobs.
        steps: optimizer steps (the learning rate decays linearly to 0 over them).
        minutes: optional wall-clock cap; the run stops early (and still saves) when reached.
        batch_size: distinct points per batch (two patches each).
        lr: Adam's initial learning rate.
        weight_decay: Adam's L2 weight decay.
        seed: seeds the model initialization, sampling and augmentation.
        checkpoint_every: steps between checkpoints.
        val_every: steps between validation FPR95 measurements (0: never).
        bf16: use bfloat16 autocast (CPU and CUDA).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda[:k]``.
        threads: torch CPU threads (``None``: torch's default).
        flip: random horizontal / vertical flips, shared by the two patches of a pair.
        rotation_deg: independent random rotation of each patch in ``[-rotation_deg, rotation_deg]``.
        gamma_jitter: independent per-patch gamma in ``[1 / (1 + g), 1 + g]``.
        noise: standard deviation bound of per-patch Gaussian noise (intensities in [0, 1]).
        width: channel multiplier of the network (:class:`HardNet`; 0.5 is a quarter of the work).
        teacher: weights file of a teacher network: the student is distilled from it (it
            reproduces the teacher's descriptors and its in-batch distance matrix, on top of ``loss``).
        distill_weight: weight of the two distillation terms.
    """

    loss: LossConfig = field(default_factory=LossConfig)
    steps: int = 2000
    minutes: float | None = None
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    checkpoint_every: int = 200
    val_every: int = 200
    bf16: bool = True
    device: str = "auto"
    threads: int | None = None
    flip: bool = True
    rotation_deg: float = 5.0
    gamma_jitter: float = 0.25
    noise: float = 0.02
    width: float = 1.0
    teacher: str | None = None
    distill_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")
        if self.minutes is not None and self.minutes <= 0:
            raise ConfigError(f"minutes must be positive, got {self.minutes}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be at least 2, got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every must be at least 1, got {self.checkpoint_every}")
        if self.val_every < 0:
            raise ConfigError(f"val_every must be >= 0, got {self.val_every}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.threads}")
        if not 0.0 < self.width <= 1.0:
            raise ConfigError(f"width must be in (0, 1], got {self.width}")
        if self.distill_weight < 0:
            raise ConfigError(f"distill_weight must be >= 0, got {self.distill_weight}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; refuses CUDA without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device '{name}': {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device '{name}' requested but this machine has no CUDA GPU")
    return dev


class PairSampler:
    """Draws ``n`` distinct point ids with two distinct patches each.

    Only points with at least two patches are drawn.
    """

    def __init__(self, ids: np.ndarray):
        ids = np.asarray(ids)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
        counts = np.diff(np.r_[starts, len(ids)])
        keep = counts >= 2
        self.order = order
        self.starts = starts[keep]
        self.counts = counts[keep]

    @property
    def num_points(self) -> int:
        return int(len(self.starts))

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Indices ``(idx_a, idx_b)`` of shape ``(n,)`` into the dataset."""
        if n > self.num_points:
            raise ConfigError(f"batch of {n} points requested but the dataset has only {self.num_points} "
                              "points with two or more patches")
        g = rng.choice(self.num_points, size=n, replace=False)
        c = self.counts[g]
        i = rng.integers(0, c)
        j = (i + 1 + rng.integers(0, c - 1)) % c
        return self.order[self.starts[g] + i], self.order[self.starts[g] + j]


def rotate_patches(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each patch about its centre (bilinear, border padding), counter-clockwise as seen for positive angles.

    Shape:
        - x: ``(n, c, h, w)``; degrees: ``(n,)``; output like ``x``.
    """
    rad = degrees.to(x.dtype) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    # grid_sample's theta maps output to input coordinates (y down): this turns the content counter-clockwise
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_pairs(a: torch.Tensor, p: torch.Tensor, cfg: TrainConfig, gen: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment anchor/positive patches (on their device; ``gen`` must live on the same device).

    Flips are shared by the two patches of a pair (a flipped pair is a new, consistent point);
    rotations, gamma and noise are drawn per patch (robustness to orientation and photometric
    error). Brightness/contrast are not jittered: the network normalizes them away.

    Shape:
        - a, p: ``(n, 1, 32, 32)`` float in [0, 1]; outputs the same.
    """
    n = a.shape[0]
    dev = a.device
    if cfg.flip:
        hf = torch.rand(n, generator=gen, device=dev) < 0.5
        vf = torch.rand(n, generator=gen, device=dev) < 0.5
        a = torch.where(hf[:, None, None, None], a.flip(-1), a)
        p = torch.where(hf[:, None, None, None], p.flip(-1), p)
        a = torch.where(vf[:, None, None, None], a.flip(-2), a)
        p = torch.where(vf[:, None, None, None], p.flip(-2), p)
    x = torch.cat([a, p])
    m = x.shape[0]
    if cfg.rotation_deg > 0:
        ang = (torch.rand(m, generator=gen, device=dev) * 2 - 1) * cfg.rotation_deg
        x = rotate_patches(x, ang)
    if cfg.gamma_jitter > 0:
        lg = math.log1p(cfg.gamma_jitter)
        g = torch.exp((torch.rand(m, generator=gen, device=dev) * 2 - 1) * lg)
        x = x.clamp(0, 1).pow(g[:, None, None, None])
    if cfg.noise > 0:
        s = torch.rand(m, generator=gen, device=dev) * cfg.noise
        x = x + torch.randn(x.shape, generator=gen, device=dev) * s[:, None, None, None]
    return x[:n], x[n:]


def distill_loss(sa: torch.Tensor, sp: torch.Tensor, ta: torch.Tensor, tp: torch.Tensor) -> torch.Tensor:
    """Distillation terms: the student reproduces the teacher's descriptors and its distance matrix.

    ``mean ||s - t||^2`` over both patches of every pair, plus ``mean (D_s - D_t)^2`` over the
    ``n x n`` anchor/positive distance matrices (so matches are separated as the teacher does).

    Shape:
        - sa, sp, ta, tp: ``(n, d)``; output: scalar.
    """
    from .losses import distance_matrix

    reproduce = ((sa - ta).pow(2).sum(1).mean() + (sp - tp).pow(2).sum(1).mean()) / 2
    ranking = (distance_matrix(sa, sp) - distance_matrix(ta, tp)).pow(2).mean()
    return reproduce + ranking


def learning_rate(cfg: TrainConfig, step: int, elapsed_s: float) -> float:
    """Linear decay from ``cfg.lr`` to 0 over the run.

    Progress is ``step / steps``, or, with a ``minutes`` cap, the larger of that and the fraction
    of the time budget used, so that a time-capped run still ends its schedule at zero.
    """
    progress = step / cfg.steps
    if cfg.minutes is not None:
        progress = max(progress, elapsed_s / (cfg.minutes * 60.0))
    return cfg.lr * max(0.0, 1.0 - progress)


def evaluate_fpr95(model: torch.nn.Module, pairs: PairSet, device: torch.device, bf16: bool = False) -> float:
    """FPR95 of ``model`` on labelled pairs (model is put in eval mode and restored)."""
    was_training = model.training
    da = describe_patches(model, pairs.a, device=device, bf16=bf16)
    db = describe_patches(model, pairs.b, device=device, bf16=bf16)
    model.train(was_training)
    return fpr95((da - db).norm(dim=1).numpy(), pairs.label.numpy())


@dataclass
class TrainResult:
    """What a run produced."""

    steps: int
    wall_s: float
    last_loss: float
    val_fpr95: float | None
    weights: Path | None
    fp16_max_abs_diff: float | None
    stopped_early: bool


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def train(dataset: PatchDataset, cfg: TrainConfig, run_dir: Path, out: Path | None = None,
          val_pairs: PairSet | None = None, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train a :class:`HardNet` on ``dataset``.

    Args:
        dataset: patches and point ids.
        cfg: options.
        run_dir: folder for ``checkpoint.pt``, ``log.jsonl`` and ``summary.json``.
        out: where the final fp16 weights go (``None``: not written).
        val_pairs: pairs for periodic validation FPR95 (``None``: none).
        resume: continue from ``run_dir/checkpoint.pt`` when it exists.
        progress: show a tqdm bar with the loss and the latest validation FPR95.

    Raises:
        ConfigError: resuming with a checkpoint of a different configuration.
    """
    from tqdm import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    # channels_last makes oneDNN's bf16 convolutions about 1.5-2x faster on CPU (measured here).
    model = HardNet(width=cfg.width).to(device).to(memory_format=torch.channels_last)
    on_gpu = device.type == "cuda"
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                           **({"fused": True} if on_gpu else {}))
    teacher = load_teacher(cfg.teacher, device) if cfg.teacher else None
    rng = np.random.default_rng(cfg.seed)
    # On a GPU the patches, the augmentation and its random numbers live there (no host round trip).
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    sampler = PairSampler(dataset.ids.numpy())
    if sampler.num_points < cfg.batch_size:
        raise ConfigError(f"batch size {cfg.batch_size} exceeds the {sampler.num_points} points of the dataset")
    step, elapsed_before, val = 0, 0.0, None
    ckpt_path = run_dir / CHECKPOINT_NAME
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        saved = ckpt["config"]
        for key in ("loss", "batch_size", "seed", "steps", "lr"):
            if saved.get(key) != cfg.to_dict().get(key):
                raise ConfigError(f"cannot resume {ckpt_path}: it was trained with {key}={saved.get(key)!r}, "
                                  f"now {cfg.to_dict().get(key)!r}; use another run folder or the same options")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        rng.bit_generator.state = ckpt["numpy_rng"]
        gen.set_state(ckpt["torch_gen"])
        torch.set_rng_state(ckpt["torch_rng"])
        step, elapsed_before, val = ckpt["step"], ckpt["elapsed_s"], ckpt.get("val_fpr95")
        logger.info("resumed %s at step %d", ckpt_path, step)
    elif not resume and ckpt_path.is_file():
        logger.info("starting afresh; the old checkpoint %s will be overwritten", ckpt_path)

    def checkpoint() -> None:
        _atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                      "numpy_rng": rng.bit_generator.state, "torch_gen": gen.get_state(),
                      "torch_rng": torch.get_rng_state(), "step": step,
                      "elapsed_s": elapsed_before + (time.time() - t0), "val_fpr95": val,
                      "config": cfg.to_dict()}, ckpt_path)

    log_f = open(run_dir / LOG_NAME, "a")
    t0 = time.time()
    last_loss = float("nan")
    stopped_early = False
    use_bf16 = cfg.bf16
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.loss.name}", dynamic_ncols=True, disable=not progress,
               mininterval=2.0)
    patches = dataset.patches.to(device) if on_gpu else dataset.patches
    # A GPU run reads the loss back (a synchronization) only every few steps.
    log_every = 25 if on_gpu else 1
    try:
        model.train()
        while step < cfg.steps:
            if cfg.minutes is not None and elapsed_before + time.time() - t0 >= cfg.minutes * 60:
                stopped_early = True
                logger.info("time budget of %.1f min reached at step %d", cfg.minutes, step)
                break
            lr = learning_rate(cfg, step, elapsed_before + time.time() - t0)
            for group in opt.param_groups:
                group["lr"] = lr
            ia, ib = sampler.sample(cfg.batch_size, rng)
            ia_t, ib_t = torch.from_numpy(ia), torch.from_numpy(ib)
            if on_gpu:
                ia_t, ib_t = ia_t.to(device, non_blocking=True), ib_t.to(device, non_blocking=True)
            a = patches[ia_t].float().div_(255.0)
            p = patches[ib_t].float().div_(255.0)
            a, p = augment_pairs(a, p, cfg, gen)
            x = torch.cat([a, p]).to(device).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                desc = model(x)
            sa, sp = desc[: cfg.batch_size].float(), desc[cfg.batch_size:].float()
            loss = compute_loss(cfg.loss, sa, sp)
            if teacher is not None:
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    t = teacher(x).float()
                loss = loss + cfg.distill_weight * distill_loss(sa, sp, t[: cfg.batch_size], t[cfg.batch_size:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            validate = val_pairs is not None and cfg.val_every and (step % cfg.val_every == 0 or step == cfg.steps)
            if step % cfg.checkpoint_every == 0:
                checkpoint()
            if step % log_every and not validate and step != cfg.steps:
                continue
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                raise FloatingPointError(f"loss became {last_loss} at step {step}")
            record: dict[str, Any] = {"step": step, "loss": round(last_loss, 5), "lr": round(lr, 8),
                                      "elapsed_s": round(elapsed_before + time.time() - t0, 1)}
            if validate:
                val = evaluate_fpr95(model, val_pairs, device)
                record["val_fpr95"] = round(val, 5)
                logger.info("step %d loss %.4f val FPR95 %.4f", step, last_loss, val)
            log_f.write(json.dumps(record) + "\n")
            log_f.flush()
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{last_loss:.4f}", val_fpr95="-" if val is None else f"{val:.4f}")
        checkpoint()
    finally:
        bar.close()
        log_f.close()
    wall = elapsed_before + time.time() - t0
    if val_pairs is not None and step > 0 and (val is None or stopped_early):
        val = evaluate_fpr95(model, val_pairs, device)
    diff = None
    model = model.to(memory_format=torch.contiguous_format)
    if out is not None:
        save_weights(model, Path(out))
        diff = fp16_roundtrip_error(model, Path(out), val_pairs, device)
        logger.info("wrote %s (fp16; max |fp16 - fp32| descriptor difference %.2e)", out, diff)
    result = TrainResult(steps=step, wall_s=wall, last_loss=last_loss, val_fpr95=val, weights=out,
                         fp16_max_abs_diff=diff, stopped_early=stopped_early)
    summary = dataclasses.asdict(result) | {"config": cfg.to_dict(), "device": str(device),
                                           "torch_threads": torch.get_num_threads(),
                                           "patches": len(dataset), "points": dataset.num_points}
    (run_dir / SUMMARY_NAME).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return result


def load_teacher(path: str, device: torch.device) -> HardNet:
    """A frozen teacher network from a weights file (any :class:`HardNet` width)."""
    from ..network import read_state_dict, width_of_state

    state = read_state_dict(Path(path))
    net = HardNet(width=width_of_state(state))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    net = net.eval().to(device).to(memory_format=torch.channels_last)
    for prm in net.parameters():
        prm.requires_grad_(False)
    return net


def fp16_roundtrip_error(model: torch.nn.Module, path: Path, pairs: PairSet | None, device: torch.device) -> float:
    """Largest absolute descriptor difference between ``model`` (fp32) and the fp16 file at ``path``.

    Measured on up to 2048 patches of ``pairs`` (random patches when ``pairs`` is None).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    loaded = HardNet(width=getattr(model, "width", 1.0))
    loaded.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    if pairs is not None and len(pairs):
        x = pairs.a[:2048]
    else:
        x = (torch.rand(256, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    d0 = describe_patches(model, x, device=device)
    d1 = describe_patches(loaded.to(device), x, device=device)
    return float((d0 - d1).abs().max())
