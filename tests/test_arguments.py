"""Settings: flag names and defaults, cfg_args written as JSON and read back without executing."""
import argparse
import json
import os

import pytest

from arguments import (ConfigError, ModelParams, OptimizationParams, PipelineParams, get_combined_args,
                       load_cfg_args, parse_namespace_repr, save_cfg_args)


def _parser():
    parser = argparse.ArgumentParser()
    ModelParams.add_to_parser(parser)
    PipelineParams.add_to_parser(parser)
    OptimizationParams.add_to_parser(parser)
    return parser


def test_defaults_match_the_method():
    opt = OptimizationParams.extract(_parser().parse_args([]))
    assert opt.iterations == 600_000
    assert opt.position_lr_init == 0.005 and opt.position_lr_final == 0.00005
    assert opt.densify_from_iter == 10_000 and opt.densification_interval == 2_000
    assert opt.opacity_reset_interval == 60_000 and opt.densify_grad_threshold == 0.0002
    assert opt.lambda_dssim == 0.2 and opt.lambda_xyz == 0.01 and opt.threshold_scale == 0.6
    assert opt.flame_expr_lr == 1e-3 and opt.flame_pose_lr == 1e-5 and opt.flame_trans_lr == 1e-6


def test_short_flags_and_alias():
    args = _parser().parse_args(["-s", "data/x", "-m", "out/y", "-r", "2", "-w", "--eval",
                                 "--densification_interal", "50"])
    model = ModelParams.extract(args)
    assert model.source_path.endswith("data/x") and model.model_path == "out/y"
    assert model.resolution == 2 and model.white_background and model.eval
    assert OptimizationParams.extract(args).densification_interval == 50


def test_validation_names_the_flag():
    with pytest.raises(ValueError, match="--sh_degree"):
        ModelParams.extract(_parser().parse_args(["--sh_degree", "5"]))
    with pytest.raises(ValueError, match="--backend"):
        PipelineParams.extract(_parser().parse_args(["--backend", "vulkan"]))


def test_cfg_args_json_round_trip(tmp_path):
    args = _parser().parse_args(["-s", "/data/subj", "-m", str(tmp_path), "--bind_to_mesh", "--sh_degree", "2"])
    save_cfg_args(str(tmp_path), args)
    text = (tmp_path / "cfg_args").read_text()
    assert json.loads(text)["args"]["sh_degree"] == 2
    loaded = load_cfg_args(str(tmp_path))
    assert loaded["bind_to_mesh"] is True and loaded["source_path"] == "/data/subj"


def test_legacy_namespace_is_parsed_as_literals(tmp_path):
    legacy = ("Namespace(bind_to_mesh=True, data_device='cuda', eval=True, images='images', "
              "model_path='output/x', resolution=-1, sh_degree=3, source_path='/d/306', "
              "white_background=True, select_camera_id=-1, target_path='')")
    (tmp_path / "cfg_args").write_text(legacy)
    loaded = load_cfg_args(str(tmp_path))
    assert loaded["source_path"] == "/d/306" and loaded["white_background"] is True
    assert loaded["resolution"] == -1


@pytest.mark.parametrize("payload", [
    "Namespace(source_path=__import__('os').system('touch {marker}'))",
    "__import__('os').system('touch {marker}')",
    "Namespace(**{{'a': __import__('os').system('touch {marker}')}})",
    "Namespace(a=(lambda: __import__('os').system('touch {marker}'))())",
])
def test_cfg_args_with_code_is_refused_and_not_executed(tmp_path, payload):
    marker = tmp_path / "pwned"
    (tmp_path / "cfg_args").write_text(payload.format(marker=marker))
    with pytest.raises(ConfigError, match="cfg_args"):
        load_cfg_args(str(tmp_path))
    assert not marker.exists()


def test_combined_args_command_line_overrides_cfg(tmp_path):
    train_args = _parser().parse_args(["-s", "/data/subj", "-m", str(tmp_path), "--white_background",
                                       "--sh_degree", "2"])
    save_cfg_args(str(tmp_path), train_args)
    parser = argparse.ArgumentParser()
    ModelParams.add_to_parser(parser)
    PipelineParams.add_to_parser(parser)
    parser.add_argument("--iteration", type=int, default=-1)
    combined = get_combined_args(parser, ["-m", str(tmp_path), "--sh_degree", "1"])
    assert combined.sh_degree == 1               # typed: wins
    assert combined.white_background is True     # from cfg_args
    assert combined.source_path == "/data/subj"  # from cfg_args
    assert combined.iteration == -1              # parser default


def test_broken_json_names_the_file(tmp_path):
    (tmp_path / "cfg_args").write_text("{not json")
    with pytest.raises(ConfigError, match=os.path.join(str(tmp_path), "cfg_args")):
        load_cfg_args(str(tmp_path))


def test_namespace_parser_rejects_calls():
    with pytest.raises(ConfigError):
        parse_namespace_repr("Namespace(a=open('/etc/passwd'))")


def test_combined_args_do_not_inherit_run_options(tmp_path):
    """render.py takes the model and pipeline settings of the training run, not its run options
    (a run trained with --quiet must not silence render.py)."""
    import argparse
    import json

    from arguments import ModelParams, PipelineParams, get_combined_args

    (tmp_path / "cfg_args").write_text(json.dumps({"white_background": True, "quiet": True, "sh_degree": 1,
                                                   "port": 6010}))
    parser = argparse.ArgumentParser()
    ModelParams.add_to_parser(parser)
    PipelineParams.add_to_parser(parser)
    parser.add_argument("--quiet", action="store_true")
    args = get_combined_args(parser, ["-m", str(tmp_path)])
    assert args.white_background is True and args.sh_degree == 1
    assert args.quiet is False and not hasattr(args, "port")
