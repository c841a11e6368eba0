"""Image-quality metrics for evaluation: PSNR, SSIM and LPIPS (VGG).

* PSNR: :func:`utils.image_utils.psnr`, ``20 log10(1 / sqrt(MSE))`` per image, the MSE over all
  pixels and channels of [0, 1] images (floored at 1e-10: identical images score 100 dB).
* SSIM: the training SSIM of :mod:`utils.loss_utils` (11x11 Gaussian window, sigma 1.5,
  C1 = 0.01^2, C2 = 0.03^2, zero padding, mean over the whole map), applied per image.
* LPIPS: the ``lpips`` package with ``net='vgg'`` (version 0.1 linear layers, which ship inside the
  package). Its VGG16 trunk needs the ImageNet weights of torchvision,
  ``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth`` (``TORCH_HOME`` defaults to ``~/.cache/torch``).

The trunk file is located *before* anything is constructed, because ``lpips.LPIPS`` would otherwise
try to download it. When it is present (or ``--lpips_weights`` points at a copy), the network is
built through the real ``lpips`` code path with a randomly initialised trunk
(``pnet_rand=True``: no download) and the VGG16 ``features`` weights are then loaded from the file
into the trunk's slices; every trunk tensor must be covered, else the file is refused. When it is
missing and cannot be fetched, :func:`load_lpips` returns ``None`` plus a message that says which
file to place where: callers report LPIPS as unavailable, never as zero.
"""
from __future__ import annotations

import contextlib
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

__all__ = [
    "VGG16_FILENAME", "VGG16_URL", "LpipsUnavailable", "LpipsVGG", "LpipsLoad", "default_vgg16_path",
    "psnr_per_image", "ssim_per_image", "locate_vgg16_weights", "load_lpips", "lpips_help",
]

VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/" + VGG16_FILENAME
_VGG16_HASH_PREFIX = "397923af"
_VGG16_CONV_IDS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG16_CONV_CH = ((3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
                  (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512))


class LpipsUnavailable(RuntimeError):
    """The VGG16 trunk weights for LPIPS are missing or unusable (message says what to do)."""


# ---------------------------------------------------------------------------------------------
# PSNR / SSIM
# ---------------------------------------------------------------------------------------------

def _as_batch(img: torch.Tensor) -> torch.Tensor:
    if img.dim() == 3:
        img = img.unsqueeze(0)
    if img.dim() != 4:
        raise ValueError(f"expected (C, H, W) or (B, C, H, W) images, got shape {tuple(img.shape)}")
    return img


def _pair(img1: torch.Tensor, img2: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_batch(img1), _as_batch(img2)
    if a.shape != b.shape:
        raise ValueError(f"{what} needs images of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b


def psnr_per_image(img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """PSNR of each image pair (:func:`utils.image_utils.psnr`): (B,) float64 from (B, C, H, W)
    (or (C, H, W) -> (1,)) in [0, 1]. The MSE is floored at 1e-10, so identical images give 100 dB."""
    from utils.image_utils import psnr

    a, b = _pair(img1, img2, "PSNR")
    return psnr(a, b).reshape(-1)


def ssim_per_image(img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """SSIM of each image pair with the training SSIM (:func:`utils.loss_utils.ssim`): (B,)."""
    from utils.loss_utils import ssim

    a, b = _pair(img1, img2, "SSIM")
    return ssim(a.float(), b.float(), size_average=False).reshape(-1)


# ---------------------------------------------------------------------------------------------
# LPIPS weights
# ---------------------------------------------------------------------------------------------

def default_vgg16_path() -> Path:
    """Where torchvision keeps (and looks for) the VGG16 ImageNet weights: honours TORCH_HOME."""
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME


def lpips_help(expected: Path) -> str:
    """How to make LPIPS available without network."""
    return (f"LPIPS (VGG) needs the torchvision VGG16 ImageNet weights '{VGG16_FILENAME}'. "
            f"Place the file at {expected} (from {VGG16_URL}; the folder follows $TORCH_HOME, "
            f"default ~/.cache/torch), or pass --lpips_weights PATH pointing at a local copy.")


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _download_vgg16(dst: Path, timeout_s: float, progress: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _socket_timeout(timeout_s):
        # downloads to a temp file in the same folder, checks the hash prefix, then renames
        torch.hub.download_url_to_file(VGG16_URL, str(dst), hash_prefix=_VGG16_HASH_PREFIX,
                                       progress=progress)


def locate_vgg16_weights(explicit: Optional[os.PathLike | str] = None, allow_download: bool = True,
                         timeout_s: float = 30.0, progress: bool = False) -> Path:
    """Path of a VGG16 weights file, fetching it into the torch cache if allowed and possible.

    Raises :class:`LpipsUnavailable` with instructions when there is none."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise LpipsUnavailable(f"--lpips_weights {path}: no such file. " + lpips_help(default_vgg16_path()))
        return path
    path = default_vgg16_path()
    if path.is_file():
        return path
    if allow_download:
        try:
            _download_vgg16(path, timeout_s, progress)
        except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
            raise LpipsUnavailable(f"could not download {VGG16_URL} ({exc}). " + lpips_help(path)) from exc
        if path.is_file():
            return path
    raise LpipsUnavailable(f"{path} not found. " + lpips_help(path))


def _load_vgg16_features(path: Path) -> dict:
    """The ``features.*`` tensors of a torchvision VGG16 state dict file."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types; name the file
        raise LpipsUnavailable(f"{path}: not a readable PyTorch weights file ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise LpipsUnavailable(f"{path}: expected a VGG16 state dict, got {type(state).__name__}")
    feats = {k[len("features."):]: v for k, v in state.items()
             if isinstance(k, str) and k.startswith("features.") and torch.is_tensor(v)}
    missing = [f"features.{i}.{p}" for i in _VGG16_CONV_IDS for p in ("weight", "bias") if f"{i}.{p}" not in feats]
    if missing:
        raise LpipsUnavailable(f"{path}: not a torchvision VGG16 state dict (missing {', '.join(missing[:4])}"
                               f"{'...' if len(missing) > 4 else ''})")
    for i, (cin, cout) in zip(_VGG16_CONV_IDS, _VGG16_CONV_CH):
        w, b = feats[f"{i}.weight"], feats[f"{i}.bias"]
        if tuple(w.shape) != (cout, cin, 3, 3) or tuple(b.shape) != (cout,):
            raise LpipsUnavailable(f"{path}: VGG16 weights do not fit the LPIPS trunk: features.{i} has "
                                   f"weight {tuple(w.shape)} / bias {tuple(b.shape)}, expected "
                                   f"{(cout, cin, 3, 3)} / {(cout,)}")
    return feats


def _fill_trunk(trunk: torch.nn.Module, feats: dict, path: Path) -> None:
    """Copy VGG16 ``features.<i>.*`` tensors into lpips' ``slice<k>.<i>.*`` modules."""
    remapped = {}
    for slice_name, slice_mod in trunk.named_children():
        for idx, _layer in slice_mod.named_children():
            for pname in ("weight", "bias"):
                key = f"{idx}.{pname}"
                if key in feats:
                    remapped[f"{slice_name}.{key}"] = feats[key]
    try:
        trunk.load_state_dict(remapped, strict=True)  # strict: every trunk tensor must be covered
    except RuntimeError as exc:  # shape mismatch
        raise LpipsUnavailable(f"{path}: VGG16 weights do not fit the LPIPS trunk: {exc}") from exc


class LpipsVGG:
    """LPIPS (VGG, v0.1) scorer on [0, 1] images, batched.

    ``scorer(img1, img2)`` with (B, 3, H, W) or (3, H, W) tensors returns (B,) distances."""

    def __init__(self, weights_path: Path, device: str | torch.device = "cpu"):
        import lpips  # the real package: its LPIPS module, linear layers and scaling layer

        feats = _load_vgg16_features(Path(weights_path))
        # pnet_rand=True: the trunk is built randomly (no download); pretrained=True: the package's
        # own calibrated linear layers are loaded. Then the trunk gets the ImageNet weights.
        with warnings.catch_warnings():  # torchvision's 'pretrained' deprecation notice
            warnings.simplefilter("ignore", UserWarning)
            net = lpips.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        _fill_trunk(net.net, feats, Path(weights_path))
        self.weights_path = Path(weights_path)
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
        a, b = _pair(img1, img2, "LPIPS")
        a = a[:, :3].to(self.device, torch.float32)
        b = b[:, :3].to(self.device, torch.float32)
        return self.net(a, b, normalize=True).reshape(-1).float().cpu()


@dataclass
class LpipsLoad:
    """Outcome of :func:`load_lpips`: a scorer, or None with the reason."""

    scorer: Optional[LpipsVGG]
    note: str = ""

    @property
    def available(self) -> bool:
        return self.scorer is not None


def load_lpips(weights: Optional[os.PathLike | str] = None, device: str | torch.device = "cpu",
               allow_download: bool = True, timeout_s: float = 30.0, progress: bool = False) -> LpipsLoad:
    """Build the LPIPS scorer, or explain why not (never raises for missing/bad weights)."""
    try:
        path = locate_vgg16_weights(weights, allow_download=allow_download, timeout_s=timeout_s,
                                    progress=progress)
        return LpipsLoad(LpipsVGG(path, device=device), note=f"VGG16 trunk weights: {path}")
    except LpipsUnavailable as exc:
        return LpipsLoad(None, note=str(exc))
