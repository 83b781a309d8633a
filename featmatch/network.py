"""The HardNet / L2-Net patch descriptor network and loading its weights (files: :mod:`featmatch.weights`).

Both learned descriptors, ``hardnet`` and ``exptloss``, use this architecture; they differ
only in the loss they were trained with. Layer names match kornia's ``HardNet`` module, so a
state dict of ours loads into kornia's class too (the benchmarks rely on it).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, ModelNotFoundError
from .patches import PATCH_SIZE
from .weights import MODELS_ENV, existing_weight_path, models_dir, recorded_sha256, sha256_of, weight_path

__all__ = ["DESCRIPTOR_DIM", "MODELS_ENV", "HardNet", "load_weights", "models_dir", "recorded_sha256",
           "save_weights", "sha256_of", "weight_path"]  # fmt: skip

#: Descriptor length.
DESCRIPTOR_DIM = 128


class HardNet(nn.Module):
    """L2-Net / HardNet: 7 convolutions, BN without affine, dropout, 128-d unit-norm output.

    Shape:
        - Input: ``(B, 1, 32, 32)`` patches, any intensity range (each patch is normalized to
          zero mean and unit standard deviation inside ``forward``).
        - Output: ``(B, 128)`` L2-normalized descriptors.

    ``width`` scales every hidden layer's channels (``0.5``: 16/32/64 channels, about a quarter
    of the multiply-adds; a distilled student); the output stays 128-d.
    """

    def __init__(self, dropout: float = 0.3, width: float = 1.0):
        super().__init__()
        if not 0.0 < width <= 1.0 or round(32 * width) != 32 * width:
            raise ConfigError(f"width must be in (0, 1] and give whole channel counts (32 * width), got {width}")
        self.width = width
        c = [round(n * width) for n in (32, 64, 128)]

        def block(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout, affine=False),
                nn.ReLU(),
            ]

        self.features = nn.Sequential(
            *block(1, c[0]),
            *block(c[0], c[0]),
            *block(c[0], c[1], stride=2),
            *block(c[1], c[1]),
            *block(c[1], c[2], stride=2),
            *block(c[2], c[2]),
            nn.Dropout(dropout),
            nn.Conv2d(c[2], DESCRIPTOR_DIM, kernel_size=8, bias=False),
            nn.BatchNorm2d(DESCRIPTOR_DIM, affine=False),
        )

    @staticmethod
    def normalize_input(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """Per-patch zero mean, unit standard deviation."""
        flat = x.flatten(1)
        mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        std = flat.std(dim=1).view(-1, 1, 1, 1)
        return (x - mean) / (std + eps)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if patches.ndim != 4 or patches.shape[1:] != (1, PATCH_SIZE, PATCH_SIZE):
            raise ConfigError(f"HardNet expects (B, 1, {PATCH_SIZE}, {PATCH_SIZE}) patches, got {tuple(patches.shape)}")
        x = self.features(self.normalize_input(patches))
        return F.normalize(x.flatten(1).float(), dim=1)


def save_weights(model: nn.Module, path: Path, half: bool = True) -> Path:
    """Write a state dict (fp16 floats when ``half``) and its ``.sha256`` beside it."""
    state = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    Path(str(path) + ".sha256").write_text(sha256_of(path) + "\n")
    return path


def load_weights(name: str, device: torch.device | str = "cpu") -> HardNet:
    """Load ``models/<name>.pt`` into a :class:`HardNet` in ``eval()`` mode. Never downloads.

    Raises:
        ModelNotFoundError: the file is missing, its sha256 does not match the recorded one,
            or it does not fit the architecture (one line, with a short reason).
    """
    path = existing_weight_path(name)
    expected = recorded_sha256(path)
    if expected is not None and sha256_of(path) != expected:
        raise ModelNotFoundError(
            f"weights {path} do not match their recorded sha256 ({path}.sha256); the file is corrupt"
        )
    state = read_state_dict(path)
    model = HardNet(width=width_of_state(state))
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except RuntimeError:
        want, got = set(model.state_dict()), set(state)
        missing, unexpected = sorted(want - got), sorted(got - want)
        reason = f"missing {', '.join(missing[:3])}" if missing else ""
        if unexpected:
            reason += ("; " if reason else "") + f"unexpected {', '.join(unexpected[:3])}"
        raise ModelNotFoundError(
            f"weights {path} cannot be loaded: not HardNet weights ({reason or 'tensor shapes differ'})"
        ) from None
    return model.eval().to(device)


def width_of_state(state: dict[str, torch.Tensor]) -> float:
    """The :class:`HardNet` width a state dict was saved with (1.0 when it cannot tell)."""
    first = state.get("features.0.weight")
    if first is None or first.ndim != 4 or first.shape[0] % 2:
        return 1.0
    width = first.shape[0] / 32
    return width if 0.0 < width <= 1.0 else 1.0


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save``-d state dict, loaded safely (``weights_only``).

    Raises:
        ModelNotFoundError: a one-line reason when the file is empty, not a torch file, holds
            objects other than tensors, or is not a ``{name: tensor}`` mapping.
    """
    import pickle
    import warnings
    import zipfile

    if path.stat().st_size == 0:
        raise ModelNotFoundError(f"weights {path} cannot be loaded: the file is empty")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols: the error below says it
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message suggests weights_only=False, which would run arbitrary code: never repeat it
        if "global" in str(exc).lower():
            raise ModelNotFoundError(
                f"weights {path} cannot be loaded: it holds Python objects other than tensors (refused for safety)"
            ) from None
        raise ModelNotFoundError(f"weights {path} cannot be loaded: not a PyTorch weight file (damaged?)") from None
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError, UnicodeDecodeError):
        raise ModelNotFoundError(f"weights {path} cannot be loaded: not a PyTorch weight file (damaged?)") from None
    except Exception:  # any other failure of a foreign file is a user problem, not a bug
        raise ModelNotFoundError(f"weights {path} cannot be loaded: not a PyTorch weight file") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelNotFoundError(f"weights {path} cannot be loaded: it is not a state dict of tensors")
    return state
