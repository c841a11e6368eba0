"""The command lines of the original project: every flag of the seed README is accepted and
documented (with its default) by our scripts' --help."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN_FLAGS = """
--source_path -s --model_path -m --eval --bind_to_mesh --resolution -r --data_device --white_background -w
--sh_degree --convert_SHs_python --convert_cov3D_python --debug --debug_from --iterations --ip --port
--test_iterations --save_iterations --checkpoint_iterations --start_checkpoint --quiet --feature_lr
--opacity_lr --scaling_lr --rotation_lr --position_lr_max_steps --position_lr_init --position_lr_final
--position_lr_delay_mult --densify_from_iter --densify_until_iter --densify_grad_threshold
--densification_interal --opacity_reset_interval --lambda_dssim --percent_dense
--interval --disable_flame_static_offset --not_finetune_flame_params --flame_expr_lr --flame_trans_lr
--flame_pose_lr --lambda_xyz --threshold_xyz --metric_xyz --lambda_scale --threshold_scale --metric_scale
--lambda_dynamic_offset --lambda_laplacian --lambda_dynamic_offset_std --detect_anomaly
""".split()

RENDER_FLAGS = """
--model_path -m --skip_train --skip_val --skip_test --quiet --select_camera_id --target_path -t
--source_path -s --images -i --eval --resolution -r --white_background -w --convert_SHs_python
--convert_cov3D_python --iteration --render_mesh
""".split()

METRICS_FLAGS = ["--model_paths", "-m"]
VIEWER_FLAGS = ["--point_path", "--motion_path"]
REMOTE_FLAGS = ["--ip", "--port"]


def _help(script: str) -> str:
    out = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _assert_flags(text: str, flags):
    missing = [f for f in flags if not re.search(r"(^|[\s,\[])" + re.escape(f) + r"([\s,=\]]|$)", text, re.M)]
    assert not missing, f"flags missing from --help: {missing}"


@pytest.mark.parametrize("script,flags", [
    ("train.py", TRAIN_FLAGS), ("render.py", RENDER_FLAGS), ("metrics.py", METRICS_FLAGS),
    ("local_viewer.py", VIEWER_FLAGS), ("remote_viewer.py", REMOTE_FLAGS),
])
def test_help_lists_the_original_flags(script, flags):
    _assert_flags(_help(script), flags)


def test_train_help_shows_defaults():
    text = " ".join(_help("train.py").split())
    for fragment in ["(default: 600000)", "(default: 0.005)", "(default: 0.0002)", "(default: 60000)",
                     "(default: 0.2)", "(default: 3)"]:
        assert fragment in text, fragment


def test_cli_reference_is_in_sync():
    """docs/CLI.md is generated from the scripts' own --help (scripts/gen_cli_reference.py)."""
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import gen_cli_reference

    with open(os.path.join(ROOT, "docs", "CLI.md"), encoding="utf-8") as fh:
        committed = fh.read()
    assert committed == gen_cli_reference.render_reference(), \
        "docs/CLI.md is stale: run python scripts/gen_cli_reference.py"
