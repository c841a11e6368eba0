"""The README's main command, end to end at a tiny size on the CPU: every output exists and the
metrics file holds numbers."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_tiny_end_to_end(tmp_path):
    env = dict(os.environ, GA_DEMO_SKIP_SETUP="1", GA_PYTHON=sys.executable)
    env.pop("FLAME_MODEL_PATH", None)
    env.pop("FLAME_MASKS_PATH", None)
    out = tmp_path / "demo"
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "demo.sh"), "--tiny", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    model = next(out.glob("avatar_*"))
    for rel in ["cfg_args", "cameras.json", "results.json", "per_view.json", "results_val.json"]:
        assert (model / rel).is_file(), rel
    plys = list(model.glob("point_cloud/iteration_*/point_cloud.ply"))
    assert plys and (plys[0].parent / "flame_param.npz").is_file()
    for split in ("val", "test"):
        method = next((model / split).glob("ours_*"))
        assert len(list((method / "renders").glob("*.png"))) == len(list((method / "gt").glob("*.png"))) > 0
        assert (method / "renders.mp4").stat().st_size > 0 and (method / "gt.mp4").stat().st_size > 0
    results = json.loads((model / "results.json").read_text())
    scores = next(iter(results.values()))
    assert 10.0 < scores["PSNR"] < 60.0 and 0.0 < scores["SSIM"] <= 1.0
    # the printed walk-through names the real commands and the viewer command
    assert "train.py" in proc.stdout and "render.py" in proc.stdout and "local_viewer.py --point_path" in proc.stdout
