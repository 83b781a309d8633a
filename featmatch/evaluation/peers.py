"""Published patch descriptors as reference rows of ``featmatch eval`` and ``eval-patches``.

``PEERS`` (name -> :class:`PeerSpec`) is a registry of its own, apart from the matching
descriptors: these networks are never shipped with featmatch and never downloaded; the user
points at weight files they have (``--peer NAME=PATH`` or ``--peer-dir DIR``). Both take the
same 32x32 patches as our networks (:mod:`featmatch.patches`), so a table compares descriptors
on the same pixels.

- ``tfeat``: TFeat (Balntas et al., BMVC 2016), the published ``tfeat-*.params`` state dicts
  (``features.1``, ``features.4``, ``descr.0``). Architecture: InstanceNorm2d(1) -> Conv 7x7
  (1->32) -> Tanh -> MaxPool 2 -> Conv 6x6 (32->64) -> Tanh -> Linear 4096->128 -> Tanh. The
  input normalization is the InstanceNorm inside the network (per patch, any intensity range).
  The output is used as published: not L2-normalized (distances are L2 on the raw vectors).
- ``hardtfeat``: the TFeat architecture trained with the HardNet loss (``HardTFeat.pth`` of the
  AffNet authors: a checkpoint dict whose ``state_dict`` holds ``features.0``, ``features.3``,
  ``classifier.1`` and three fixed filter kernels ``SIFT.*`` of the module it was saved from,
  which the descriptor does not use and which are dropped). Architecture: per-patch zero mean /
  unit std -> Conv 7x7 (1->32) -> Tanh -> MaxPool 2 -> Conv 6x6 (32->64) -> Tanh -> Conv 8x8
  (64->128, the fully connected layer as a convolution) -> Tanh -> L2 normalization.

Loading is safe: ``torch.load(weights_only=True)`` (no pickled code runs), then a strict
state-dict load into our own module; anything wrong is one :class:`ModelNotFoundError` line.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ModelNotFoundError
from ..patches import PATCH_SIZE
from ..weights import sha256_of

#: Patches per forward pass of a peer network.
PEER_BATCH = 1024


class TFeat(nn.Module):
    """TFeat (Balntas et al. 2016), layer names as in the published state dicts.

    Shape:
        - Input: ``(B, 1, 32, 32)`` patches, any intensity range (InstanceNorm normalizes each).
        - Output: ``(B, 128)`` in ``(-1, 1)`` (tanh), not normalized.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.InstanceNorm2d(1, affine=False),
            nn.Conv2d(1, 32, kernel_size=7),
            nn.Tanh(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(32, 64, kernel_size=6),
            nn.Tanh(),
        )
        self.descr = nn.Sequential(nn.Linear(64 * 8 * 8, 128), nn.Tanh())

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.descr(self.features(patches).flatten(1))


class HardTFeat(nn.Module):
    """The TFeat architecture as trained with the HardNet loss (AffNet's ``HardTFeat.pth``).

    Shape:
        - Input: ``(B, 1, 32, 32)`` patches, any intensity range (each is normalized to zero
          mean and unit standard deviation first).
        - Output: ``(B, 128)`` L2-normalized.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=7),
            nn.Tanh(),
            nn.MaxPool2d(kernel_size=2, stride=2),
            nn.Conv2d(32, 64, kernel_size=6),
            nn.Tanh(),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Conv2d(64, 128, kernel_size=8), nn.Tanh())

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        flat = patches.flatten(1)
        x = (patches - flat.mean(1).view(-1, 1, 1, 1)) / (flat.std(1).view(-1, 1, 1, 1) + 1e-7)
        return F.normalize(self.classifier(self.features(x)).flatten(1), dim=1)


@dataclass(frozen=True)
class PeerSpec:
    """One published descriptor.

    Attributes:
        build: makes the (untrained) module the weights load into.
        files: where ``--peer-dir DIR`` looks for the weights, relative to DIR, in order (the
            first is the layout of ``../shared/data``).
        ignore_prefixes: state-dict keys to drop before the strict load (not part of the network).
        reference: what the weights are, for the report.
    """

    build: Callable[[], nn.Module]
    files: tuple[str, ...]
    ignore_prefixes: tuple[str, ...] = ()
    reference: str = ""


#: name -> published descriptor. Weights are never shipped or downloaded: see the module docstring.
PEERS: dict[str, PeerSpec] = {
    "hardtfeat": PeerSpec(
        HardTFeat,
        ("hardtfeat-weights/HardTFeat.pth", "HardTFeat.pth"),
        ignore_prefixes=("SIFT.",),
        reference="HardTFeat (HardNet loss, TFeat architecture, UBC liberty; Mishchuk et al. 2017, AffNet release)",
    ),
    "tfeat": PeerSpec(
        TFeat,
        (
            "tfeat-weights/pretrained-models/tfeat-liberty.params",
            "pretrained-models/tfeat-liberty.params",
            "tfeat-liberty.params",
        ),
        reference="TFeat (Balntas et al. 2016)",
    ),
}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def check_peer_name(name: str) -> None:
    """Raise ConfigError (listing the valid names) when ``name`` is not in :data:`PEERS`."""
    if name not in PEERS:
        raise ConfigError(f"unknown peer descriptor '{name}'; choose one of {', '.join(sorted(PEERS))}")


def load_peer(name: str, path: Path) -> nn.Module:
    """Load the published weights ``path`` of peer ``name`` into our module, in eval mode.

    Raises:
        ConfigError: unknown name.
        ModelNotFoundError: the file is missing, cannot be read safely, or does not fit the
            architecture (one line saying which).
    """
    check_peer_name(name)
    spec = PEERS[name]
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"no weights for peer '{name}': {path} is not a file (featmatch never downloads them)")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols; the error below says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a foreign or broken file is a user problem, never a traceback
        raise ModelNotFoundError(
            f"peer '{name}': {path} cannot be read as plain tensors (torch.load weights_only=True): {_first_line(exc)}"
        ) from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelNotFoundError(f"peer '{name}': {path} holds no state dict of tensors")
    state = {k: v.float() for k, v in state.items() if not k.startswith(spec.ignore_prefixes)}
    model = spec.build()
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or extra or wrong:
        parts = [
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(extra[:3])}" if extra else "",
            f"shape of {wrong[0]} is {have[wrong[0]]}, not {want[wrong[0]]}" if wrong else "",
        ]
        raise ModelNotFoundError(
            f"peer '{name}': {path} does not fit the {spec.build.__name__} architecture: "
            + "; ".join(p for p in parts if p)
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


class PeerDescriptor:
    """A published descriptor run on featmatch's patches (fp32, CPU unless CUDA is asked for).

    Args:
        name: key of :data:`PEERS`.
        path: the weight file.
        device: ``cpu``, ``cuda`` or ``auto`` (CUDA when available).
        batch_size: patches per forward pass.
    """

    def __init__(self, name: str, path: Path, device: str = "cpu", batch_size: int = PEER_BATCH):
        self.name = name
        self.path = Path(path)
        self.net = load_peer(name, self.path)
        self.sha256 = sha256_of(self.path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.net.to(device)
        self.batch_size = batch_size
        self.precision = "fp32"

    def describe_patches(self, patches) -> np.ndarray:
        """Shape: ``(N, 1, 32, 32)`` uint8 (0..255) or float in [0, 1], tensor or array -> ``(N, 128)`` float32."""
        x = torch.as_tensor(patches)
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, PATCH_SIZE, PATCH_SIZE):
            raise ConfigError(
                f"peer descriptors expect (N, 1, {PATCH_SIZE}, {PATCH_SIZE}) patches, got {tuple(x.shape)}"
            )
        outs = []
        with torch.no_grad():
            for s in range(0, x.shape[0], self.batch_size):
                chunk = x[s : s + self.batch_size]
                chunk = chunk.float().div(255.0) if chunk.dtype == torch.uint8 else chunk.float()
                outs.append(self.net(chunk.to(self.device)).float().cpu())
        if not outs:
            return np.zeros((0, 128), np.float32)
        return torch.cat(outs).numpy()

    def __call__(self, keypoints) -> np.ndarray:
        """Shape: ``Keypoints`` of N points -> ``(N, 128)`` float32 (patches cut as for our networks)."""
        from ..patches import patches_for

        if len(keypoints) == 0:
            return np.zeros((0, 128), np.float32)
        return self.describe_patches(patches_for(keypoints))

    def info(self) -> dict:
        """What the report records about this peer."""
        return {"path": str(self.path), "sha256": self.sha256, "reference": PEERS[self.name].reference}


def peer_paths(specs: Sequence[str] = (), peer_dir: Path | None = None) -> dict[str, Path]:
    """``--peer NAME=PATH`` values and ``--peer-dir DIR`` -> name -> weight file.

    With ``peer_dir`` every peer of :data:`PEERS` is looked up in it (its ``files``); an explicit
    ``NAME=PATH`` wins over the folder.

    Raises:
        ConfigError: a malformed value, an unknown or repeated name.
        ModelNotFoundError: a peer not found in ``peer_dir``.
    """
    out: dict[str, Path] = {}
    explicit: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        name = name.strip()
        if not sep or not name or not path.strip():
            raise ConfigError(f"--peer takes NAME=PATH (NAME one of {', '.join(sorted(PEERS))}), got '{spec}'")
        check_peer_name(name)
        if name in explicit:
            raise ConfigError(f"--peer {name} is given twice")
        explicit[name] = Path(path.strip())
    if peer_dir is not None:
        peer_dir = Path(peer_dir)
        if not peer_dir.is_dir():
            raise ModelNotFoundError(f"--peer-dir {peer_dir} is not a folder")
        for name, spec in PEERS.items():
            if name in explicit:
                continue
            found = next((peer_dir / f for f in spec.files if (peer_dir / f).is_file()), None)
            if found is None:
                raise ModelNotFoundError(
                    f"peer '{name}' not found in {peer_dir} (looked for {', '.join(spec.files)}); "
                    f"pass --peer {name}=PATH"
                )
            out[name] = found
    out.update(explicit)
    return out


def build_peers(paths: dict[str, Path], device: str = "cpu") -> dict[str, PeerDescriptor]:
    """name -> :class:`PeerDescriptor` for :func:`peer_paths`'s result (loads every file now)."""
    return {name: PeerDescriptor(name, path, device=device) for name, path in paths.items()}
