"""Command-line settings: typed dataclasses registered as argparse groups.

The three groups keep the original flag names and defaults (GaussianAvatars, itself built on
3D Gaussian Splatting): model (data and representation), pipeline (rendering) and optimization.
Training writes the resolved settings into ``MODEL/cfg_args`` as JSON; ``render.py`` and the
viewers read them back with :func:`get_combined_args`. Old ``cfg_args`` files written by the
original code (the ``repr`` of an ``argparse.Namespace``) are parsed as literals only: nothing in
the file is ever executed.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Sequence, Type, TypeVar

__all__ = [
    "ModelParams",
    "PipelineParams",
    "OptimizationParams",
    "ConfigError",
    "save_cfg_args",
    "load_cfg_args",
    "parse_namespace_repr",
    "get_combined_args",
]

CFG_ARGS_NAME = "cfg_args"

T = TypeVar("T", bound="ParamGroup")


class ConfigError(ValueError):
    """A ``cfg_args`` file that cannot be read safely."""


# Short flags of the original command line.
_SHORT_FLAGS = {
    "source_path": "-s",
    "model_path": "-m",
    "images": "-i",
    "resolution": "-r",
    "white_background": "-w",
    "target_path": "-t",
}

# Extra spellings accepted for compatibility (the seed README spells one flag this way).
_ALIASES = {
    "densification_interval": ["--densification_interal"],
    "compute_cov3D_python": ["--convert_cov3D_python"],
}


@dataclass
class ParamGroup:
    """Base for a group of settings that maps one-to-one onto command-line flags."""

    _title = "Parameters"

    @classmethod
    def setting_fields(cls) -> List[dataclasses.Field]:
        return [f for f in fields(cls) if not f.name.startswith("_")]

    @classmethod
    def add_to_parser(cls, parser: argparse.ArgumentParser, sentinel: bool = False) -> argparse._ArgumentGroup:
        """Register this group's flags. With ``sentinel`` every default is None, so that
        :func:`get_combined_args` can tell which flags the user actually typed."""
        group = parser.add_argument_group(cls._title)
        helps = cls._field_help()
        for f in cls.setting_fields():
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            names = ["--" + f.name]
            if f.name in _SHORT_FLAGS:
                names.append(_SHORT_FLAGS[f.name])
            names.extend(_ALIASES.get(f.name, []))
            help_text = helps.get(f.name, "")
            shown = f"{help_text} (default: {default!r})" if help_text else f"(default: {default!r})"
            if isinstance(default, bool):
                group.add_argument(*names, dest=f.name, action="store_true",
                                   default=None if sentinel else default, help=shown)
            else:
                group.add_argument(*names, dest=f.name, type=type(default),
                                   default=None if sentinel else default, help=shown)
        return group

    @classmethod
    def _field_help(cls) -> Dict[str, str]:
        return {}

    @classmethod
    def extract(cls: Type[T], args: argparse.Namespace) -> T:
        """Build the dataclass from a parsed namespace (missing entries keep their defaults)."""
        values = {}
        for f in cls.setting_fields():
            if hasattr(args, f.name) and getattr(args, f.name) is not None:
                values[f.name] = getattr(args, f.name)
        obj = cls(**values)
        obj.validate()
        return obj

    def validate(self) -> None:
        """Check value ranges; raise ValueError naming the flag."""

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in self.setting_fields()}


@dataclass
class ModelParams(ParamGroup):
    """Data and representation (the original's "Loading Parameters")."""

    _title = "Loading Parameters"
    sh_degree: int = 3
    source_path: str = ""
    model_path: str = ""
    images: str = "images"
    resolution: int = -1
    white_background: bool = False
    data_device: str = "cuda"
    eval: bool = False
    bind_to_mesh: bool = False
    disable_flame_static_offset: bool = False
    not_finetune_flame_params: bool = False
    select_camera_id: int = -1
    target_path: str = ""
    flame_model_path: str = ""
    flame_masks_path: str = ""
    teeth: str = "original"

    @classmethod
    def _field_help(cls) -> Dict[str, str]:
        return {
            "sh_degree": "order of spherical harmonics (0..3)",
            "source_path": "subject folder (NeRSemble/dynamic, COLMAP or Blender layout)",
            "model_path": "output folder of the trained model (output/<random> when empty)",
            "images": "COLMAP image subfolder",
            "resolution": "1,2,4,8 divide the image size; other values set the width; -1 caps width at 1600",
            "white_background": "composite on white instead of black",
            "data_device": "where cached images live: cuda or cpu",
            "eval": "hold out val (novel view) and test (novel expressions) splits",
            "bind_to_mesh": "bind Gaussians to the FLAME mesh (GaussianAvatars)",
            "disable_flame_static_offset": "ignore the per-subject static vertex offsets",
            "not_finetune_flame_params": "keep the tracked FLAME parameters fixed",
            "select_camera_id": "only use this camera for val/test/reenactment (-1: all)",
            "target_path": "another subject whose FLAME motion and cameras drive the avatar",
            "flame_model_path": "FLAME model pickle (default flame_model/assets/flame/flame2023.pkl or $FLAME_MODEL_PATH)",
            "flame_masks_path": "FLAME masks pickle (default flame_model/assets/flame/FLAME_masks.pkl or $FLAME_MASKS_PATH)",
            "teeth": "teeth construction: 'original' (the release's: rigid, from the outer lip rings) or "
                     "'ring_fit' (this project's earlier one: fitted to the inner lip ring, follows expressions)",
        }

    def validate(self) -> None:
        if not 0 <= self.sh_degree <= 3:
            raise ValueError(f"--sh_degree must be in 0..3, got {self.sh_degree}")
        if self.data_device not in ("cuda", "cpu") and not self.data_device.startswith("cuda:"):
            raise ValueError(f"--data_device must be 'cuda' or 'cpu', got {self.data_device!r}")
        if self.resolution == 0 or self.resolution < -1:
            raise ValueError(f"--resolution must be -1, 1, 2, 4, 8 or a target width, got {self.resolution}")
        from flame_model.teeth import TEETH_STYLES
        if self.teeth not in TEETH_STYLES:
            raise ValueError(f"--teeth must be one of {', '.join(TEETH_STYLES)}, got {self.teeth!r}")

    @classmethod
    def extract(cls, args: argparse.Namespace) -> "ModelParams":  # type: ignore[override]
        obj = super().extract(args)
        if obj.source_path:
            obj.source_path = os.path.abspath(obj.source_path)
        if obj.target_path:
            obj.target_path = os.path.abspath(obj.target_path)
        return obj


@dataclass
class PipelineParams(ParamGroup):
    """Rendering pipeline switches."""

    _title = "Pipeline Parameters"
    convert_SHs_python: bool = False
    compute_cov3D_python: bool = False
    debug: bool = False
    backend: str = "auto"

    @classmethod
    def _field_help(cls) -> Dict[str, str]:
        return {
            "convert_SHs_python": "evaluate SH colours in PyTorch instead of the rasterizer",
            "compute_cov3D_python": "compute 3D covariances in PyTorch instead of the rasterizer",
            "debug": "check rasterizer inputs for NaN/Inf and name the offending tensor",
            "backend": "rasterizer: auto (CUDA on GPU, C++ on CPU, when built), cuda, cpu, or reference (pure PyTorch)",
        }

    def validate(self) -> None:
        if self.backend not in ("auto", "cuda", "cpu", "reference"):
            raise ValueError(f"--backend must be auto, cuda, cpu or reference, got {self.backend!r}")


SPLIT_OFFSETS = ("local", "original")
PRUNE_KEEP = ("most_opaque", "all")


@dataclass
class OptimizationParams(ParamGroup):
    """Optimizer, schedule and densification settings (GaussianAvatars defaults for NeRSemble)."""

    _title = "Optimization Parameters"
    iterations: int = 600_000
    position_lr_init: float = 0.005
    position_lr_final: float = 0.00005
    position_lr_delay_mult: float = 0.01
    position_lr_max_steps: int = 600_000
    feature_lr: float = 0.0025
    opacity_lr: float = 0.05
    scaling_lr: float = 0.017
    rotation_lr: float = 0.001
    flame_expr_lr: float = 1e-3
    flame_trans_lr: float = 1e-6
    flame_pose_lr: float = 1e-5
    percent_dense: float = 0.01
    lambda_dssim: float = 0.2
    densification_interval: int = 2_000
    opacity_reset_interval: int = 60_000
    densify_from_iter: int = 10_000
    densify_until_iter: int = 600_000
    densify_grad_threshold: float = 0.0002
    lambda_xyz: float = 1e-2
    threshold_xyz: float = 1.0
    metric_xyz: bool = False
    lambda_scale: float = 1.0
    threshold_scale: float = 0.6
    metric_scale: bool = False
    lambda_dynamic_offset: float = 0.0
    lambda_laplacian: float = 0.0
    lambda_dynamic_offset_std: float = 0.0
    random_background: bool = False
    split_offsets: str = "local"
    prune_keep: str = "most_opaque"

    @classmethod
    def _field_help(cls) -> Dict[str, str]:
        return {
            "iterations": "total training iterations",
            "position_lr_init": "initial position learning rate (times the scene extent)",
            "position_lr_final": "final position learning rate",
            "position_lr_delay_mult": "position learning-rate delay multiplier",
            "position_lr_max_steps": "steps over which the position lr decays",
            "feature_lr": "SH DC learning rate (rest: /20)",
            "opacity_lr": "opacity learning rate",
            "scaling_lr": "scaling learning rate",
            "rotation_lr": "rotation learning rate",
            "flame_expr_lr": "FLAME expression fine-tuning learning rate",
            "flame_trans_lr": "FLAME translation fine-tuning learning rate",
            "flame_pose_lr": "FLAME rotation/neck/jaw/eyes fine-tuning learning rate",
            "percent_dense": "fraction of the scene extent separating clone from split",
            "lambda_dssim": "weight of D-SSIM in the image loss",
            "densification_interval": "densify every N iterations",
            "opacity_reset_interval": "reset opacities every N iterations",
            "densify_from_iter": "first densification iteration",
            "densify_until_iter": "last densification iteration",
            "densify_grad_threshold": "screen-space gradient threshold for densification",
            "lambda_xyz": "weight of the local position regularizer",
            "threshold_xyz": "position regularizer threshold",
            "metric_xyz": "measure the position regularizer in metric (world) units",
            "lambda_scale": "weight of the scale regularizer",
            "threshold_scale": "scale regularizer threshold",
            "metric_scale": "measure the scale regularizer in metric (world) units",
            "lambda_dynamic_offset": "weight of the dynamic offset regularizer",
            "lambda_laplacian": "weight of the mesh Laplacian regularizer",
            "lambda_dynamic_offset_std": "weight of the dynamic offset temporal std regularizer",
            "random_background": "train on random background colours",
            "split_offsets": "split children of bound splats: 'local' samples the parent's Gaussian in its "
                             "triangle frame (children spread like the parent); 'original' adds a sample of "
                             "the world-space scale to the local position, as the original code does "
                             "(children sit almost on the parent)",
            "prune_keep": "when pruning would empty a triangle: 'most_opaque' keeps its most opaque marked "
                          "splat; 'all' keeps all of its marked splats, as the original code does",
        }

    def validate(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"--iterations must be >= 0, got {self.iterations}")
        if not 0.0 <= self.lambda_dssim <= 1.0:
            raise ValueError(f"--lambda_dssim must be in [0, 1], got {self.lambda_dssim}")
        if self.densification_interval <= 0:
            raise ValueError(f"--densification_interval must be > 0, got {self.densification_interval}")
        if self.opacity_reset_interval <= 0:
            raise ValueError(f"--opacity_reset_interval must be > 0, got {self.opacity_reset_interval}")
        if self.split_offsets not in SPLIT_OFFSETS:
            raise ValueError(f"--split_offsets must be one of {', '.join(SPLIT_OFFSETS)}, got {self.split_offsets!r}")
        if self.prune_keep not in PRUNE_KEEP:
            raise ValueError(f"--prune_keep must be one of {', '.join(PRUNE_KEEP)}, got {self.prune_keep!r}")


# ---------------------------------------------------------------------------------------------
# cfg_args: written as JSON, read back without executing anything
# ---------------------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def save_cfg_args(model_path: str, args: Any) -> str:
    """Write the training settings to ``model_path/cfg_args`` as JSON (atomically).

    ``args`` is an ``argparse.Namespace``, a dict, or a dataclass; values that JSON cannot hold
    are stored as strings."""
    from utils.system_utils import atomic_write

    if isinstance(args, argparse.Namespace):
        data = vars(args)
    elif dataclasses.is_dataclass(args):
        data = {f.name: getattr(args, f.name) for f in fields(args) if not f.name.startswith("_")}
    else:
        data = dict(args)
    os.makedirs(model_path, exist_ok=True)
    path = os.path.join(model_path, CFG_ARGS_NAME)
    payload = {"format": "gaussian-avatars-cfg", "version": 1, "args": _jsonable(data)}
    with atomic_write(path, mode="w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True)
    return path


_ALLOWED_LITERAL_NODES = (
    ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.UnaryOp, ast.USub, ast.UAdd, ast.Load,
)


def _literal(node: ast.AST, path: str, field: str) -> Any:
    for sub in ast.walk(node):
        if not isinstance(sub, _ALLOWED_LITERAL_NODES):
            raise ConfigError(
                f"{path}: value of '{field}' is not a plain literal ({type(sub).__name__}); "
                "refusing to read it (a cfg_args file must never execute code)"
            )
    return ast.literal_eval(node)


def parse_namespace_repr(text: str, path: str = CFG_ARGS_NAME) -> Dict[str, Any]:
    """Parse ``Namespace(a=1, b='x', ...)`` written by the original code, as literals only."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"{path}: not valid JSON nor a Namespace(...) literal: {exc.msg} (line {exc.lineno})") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Namespace"):
        raise ConfigError(f"{path}: expected JSON or 'Namespace(...)', found another expression; refusing to read it")
    if call.args:
        raise ConfigError(f"{path}: Namespace(...) with positional arguments is not a cfg_args file")
    values: Dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise ConfigError(f"{path}: '**' expansion is not allowed in cfg_args")
        values[kw.arg] = _literal(kw.value, path, kw.arg)
    return values


def load_cfg_args(model_path: str) -> Dict[str, Any]:
    """Read ``model_path/cfg_args`` (JSON or a legacy Namespace repr) into a dict. A missing
    file gives an empty dict; an unsafe or broken file raises :class:`ConfigError`."""
    path = model_path if os.path.basename(model_path) == CFG_ARGS_NAME and os.path.isfile(model_path) \
        else os.path.join(model_path, CFG_ARGS_NAME)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, "r", encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            payload = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: invalid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise ConfigError(f"{path}: top level must be a JSON object")
        data = payload.get("args", payload) if payload.get("format") == "gaussian-avatars-cfg" else payload
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: field 'args' must be an object")
        return data
    return parse_namespace_repr(stripped, path)


def get_combined_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None,
                      groups: Sequence[Type[ParamGroup]] = (ModelParams, PipelineParams)) -> argparse.Namespace:
    """Settings for render/metrics/viewers: the model's ``cfg_args`` overlaid by what the user
    typed on the command line, the remaining gaps filled with the parser's defaults.

    The parser must already hold the groups' flags (``Group.add_to_parser(parser)``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    typed_parser = argparse.ArgumentParser(add_help=False, parents=[], conflict_handler="resolve")
    # Re-register every action with a None default to see what was typed explicitly.
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        kwargs: Dict[str, Any] = {"dest": action.dest, "default": None}
        if isinstance(action, argparse._StoreTrueAction):
            kwargs["action"] = "store_true"
        elif isinstance(action, argparse._StoreFalseAction):
            kwargs["action"] = "store_false"
        else:
            kwargs["nargs"] = action.nargs
            kwargs["type"] = action.type
            if action.choices is not None:
                kwargs["choices"] = action.choices
        if action.option_strings:
            typed_parser.add_argument(*action.option_strings, **kwargs)
        else:
            typed_parser.add_argument(action.dest, **{k: v for k, v in kwargs.items() if k != "dest"})
    typed, _ = typed_parser.parse_known_args(argv)
    defaults = parser.parse_args(argv)

    model_path = typed.model_path if getattr(typed, "model_path", None) else getattr(defaults, "model_path", "")
    stored = load_cfg_args(model_path) if model_path else {}
    # Only the settings of the model and pipeline groups come from the training run; its run
    # options (--quiet, --port, iterations...) are not this program's business.
    inherited = {f.name for group in groups for f in group.setting_fields()}
    merged = dict(vars(defaults))
    merged.update({k: v for k, v in stored.items() if k in inherited})
    for key, value in vars(typed).items():
        if value is not None:
            merged[key] = value
    if model_path:
        merged["model_path"] = model_path
    return argparse.Namespace(**merged)
