"""metrics.py and utils/metrics_utils.py: PSNR / SSIM against NumPy, LPIPS through the real
``lpips`` code path with a locally written VGG16 checkpoint, the LPIPS-unavailable path, and the
command line end to end on fake model folders (including bad input)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import metrics
from utils import metrics_utils as mu

from numpy_oracles import numpy_ssim_map


# ---------------------------------------------------------------------------------------------
# independent references
# ---------------------------------------------------------------------------------------------

def np_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(20 * np.log10(1.0 / np.sqrt(max(mse, 1e-10))))


def make_pair(rng: np.random.Generator, h: int, w: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    gt = rng.random((3, h, w))
    # smooth-ish content so SSIM is not trivially ~0
    gt = (gt + np.roll(gt, 1, axis=1) + np.roll(gt, 1, axis=2)) / 3
    out = np.clip(gt + rng.normal(0, noise, gt.shape), 0, 1)
    return out.astype(np.float32), gt.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# PSNR / SSIM
# ---------------------------------------------------------------------------------------------

def test_psnr_matches_numpy():
    rng = np.random.default_rng(1)
    pairs = [make_pair(rng, 17, 23, s) for s in (0.02, 0.1)]
    r = torch.from_numpy(np.stack([p[0] for p in pairs]))
    g = torch.from_numpy(np.stack([p[1] for p in pairs]))
    got = mu.psnr_per_image(r, g).numpy()
    want = [np_psnr(a, b) for a, b in pairs]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0] > got[1]
    # identical images: the documented 100 dB floor, finite
    assert mu.psnr_per_image(g[0], g[0]).item() == pytest.approx(100.0)


def test_ssim_matches_numpy():
    rng = np.random.default_rng(2)
    pairs = [make_pair(rng, 19, 26, s) for s in (0.03, 0.2)]
    r = torch.from_numpy(np.stack([p[0] for p in pairs]))
    g = torch.from_numpy(np.stack([p[1] for p in pairs]))
    got = mu.ssim_per_image(r, g).numpy()
    want = [numpy_ssim_map(a, b).mean() for a, b in pairs]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert got[0] > got[1]
    assert mu.ssim_per_image(g, g).numpy() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_ssim_reference_agrees_with_skimage_interior():
    """Optional cross-check of the NumPy reference itself (skimage crops the 5-px border)."""
    skm = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(3)
    a, b = make_pair(rng, 32, 40, 0.1)
    ours = numpy_ssim_map(a, b)[:, 5:-5, 5:-5].mean()
    theirs = skm.structural_similarity(a, b, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False, data_range=1.0)
    assert ours == pytest.approx(theirs, abs=1e-6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        mu.psnr_per_image(torch.zeros(3, 4, 5), torch.zeros(3, 4, 6))


# ---------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def vgg_file(tmp_path_factory) -> Path:
    """A torchvision-format VGG16 checkpoint with random weights (features only: small, fast)."""
    from torchvision.models import vgg

    torch.manual_seed(0)
    feats = vgg.make_layers(vgg.cfgs["D"]).state_dict()  # == torchvision.models.vgg16().features
    path = tmp_path_factory.mktemp("vgg") / mu.VGG16_FILENAME
    torch.save({f"features.{k}": v for k, v in feats.items()}, path)
    return path


@pytest.fixture(scope="session")
def torch_home_with_vgg(tmp_path_factory, vgg_file) -> Path:
    home = tmp_path_factory.mktemp("torch_home")
    dst = home / "hub" / "checkpoints" / mu.VGG16_FILENAME
    dst.parent.mkdir(parents=True)
    dst.symlink_to(vgg_file)
    return home


@pytest.fixture(scope="session")
def lpips_scorer(torch_home_with_vgg):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(torch_home_with_vgg))
        loaded = mu.load_lpips(allow_download=False)
    assert loaded.available, loaded.note
    return loaded.scorer


def test_lpips_loads_trunk_from_torch_home(lpips_scorer, vgg_file):
    state = torch.load(vgg_file, weights_only=True)
    trunk = lpips_scorer.net.net
    # every conv of the lpips trunk holds the file's tensors (first, a middle and the last one)
    assert torch.equal(trunk.slice1[0].weight, state["features.0.weight"])
    assert torch.equal(getattr(trunk.slice3, "14").bias, state["features.14.bias"])
    assert torch.equal(getattr(trunk.slice5, "28").weight, state["features.28.weight"])
    # the calibrated linear layers come from the lpips package (non-negative weights)
    assert (lpips_scorer.net.lin0.model[-1].weight >= 0).all()


def test_lpips_zero_for_identical_and_grows_with_noise(lpips_scorer):
    rng = np.random.default_rng(4)
    gt = torch.from_numpy(make_pair(rng, 48, 40, 0.0)[1])
    noisy = [torch.clamp(gt + s * torch.from_numpy(rng.normal(size=gt.shape).astype(np.float32)), 0, 1)
             for s in (0.02, 0.1, 0.4)]
    batch_r = torch.stack([gt] + noisy)
    batch_g = gt.expand_as(batch_r)
    d = lpips_scorer(batch_r, batch_g).numpy()
    assert d.shape == (4,)
    assert d[0] == pytest.approx(0.0, abs=1e-7)
    assert 0 < d[1] < d[2] < d[3]
    # batching does not change the values
    single = lpips_scorer(noisy[1], gt).item()
    assert single == pytest.approx(d[2], rel=1e-4)


def test_lpips_unavailable_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    loaded = mu.load_lpips(allow_download=False)
    assert not loaded.available and loaded.scorer is None
    expected = tmp_path / "empty" / "hub" / "checkpoints" / mu.VGG16_FILENAME
    assert str(expected) in loaded.note
    assert "--lpips_weights" in loaded.note
    assert not expected.exists()


def test_lpips_rejects_bad_weights_file(tmp_path, vgg_file):
    bad = tmp_path / "vgg.pth"
    bad.write_bytes(b"not a checkpoint")
    loaded = mu.load_lpips(bad, allow_download=False)
    assert not loaded.available and str(bad) in loaded.note
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, wrong)
    loaded = mu.load_lpips(wrong, allow_download=False)
    assert not loaded.available and "features.0.bias" in loaded.note
    state = torch.load(vgg_file, weights_only=True)
    state["features.2.weight"] = torch.zeros(64, 64, 5, 5)  # wrong kernel size
    shaped = tmp_path / "shaped.pth"
    torch.save(state, shaped)
    loaded = mu.load_lpips(shaped, allow_download=False)
    assert not loaded.available and str(shaped) in loaded.note and "do not fit" in loaded.note
    missing = mu.load_lpips(tmp_path / "nope.pth", allow_download=False)
    assert not missing.available and "nope.pth" in missing.note


# ---------------------------------------------------------------------------------------------
# metrics.py end to end
# ---------------------------------------------------------------------------------------------

def _u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1).transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)


def write_method(root: Path, split: str, method: str, n: int, noise: float, seed: int,
                 size=(24, 32)) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    (root / split / method / "renders").mkdir(parents=True)
    (root / split / method / "gt").mkdir(parents=True)
    pairs = []
    for i in range(n):
        r, g = make_pair(rng, size[0], size[1], noise)
        r8, g8 = _u8(r), _u8(g)
        Image.fromarray(r8).save(root / split / method / "renders" / f"{i:05d}.png")
        # gt as RGBA: the alpha channel is dropped, as in the original metrics script
        rgba = np.concatenate([g8, np.full(g8.shape[:2] + (1,), 200, np.uint8)], axis=2)
        Image.fromarray(rgba).save(root / split / method / "gt" / f"{i:05d}.png")
        pairs.append((r8.transpose(2, 0, 1) / 255.0, g8.transpose(2, 0, 1) / 255.0))
    return pairs


def test_metrics_cli_end_to_end(tmp_path, vgg_file, lpips_scorer, capsys):
    model = tmp_path / "model"
    good = write_method(model, "test", "ours_7", 3, 0.05, seed=10)
    write_method(model, "val", "ours_7", 2, 0.1, seed=11)
    # a method with a size mismatch and another with a missing gt: reported, not scored
    write_method(model, "test", "ours_bad", 2, 0.05, seed=12)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(model / "test/ours_bad/renders/00001.png")
    write_method(model, "test", "ours_short", 2, 0.05, seed=13)
    (model / "test/ours_short/gt/00001.png").unlink()
    # a second model with nothing rendered
    empty = tmp_path / "empty_model"
    empty.mkdir()

    rc = metrics.main(["-m", str(model), str(empty), "--lpips_weights", str(vgg_file),
                       "--device", "cpu", "--quiet", "--batch_size", "2"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "ours_bad/renders/00001.png is 10x10" in err and "ours_bad/gt/00001.png is 32x24" in err
    assert "no render for" not in err.split("ours_short")[0]
    assert "no gt for" in err and "ours_short/renders/00001.png" in err
    assert str(empty) in err and "render.py" in err

    results = json.loads((model / "results.json").read_text())
    per_view = json.loads((model / "per_view.json").read_text())
    assert set(results) == {"ours_7"}
    assert set(results["ours_7"]) == {"SSIM", "PSNR", "LPIPS"}
    assert set(per_view["ours_7"]) == {"SSIM", "PSNR", "LPIPS"}
    assert list(per_view["ours_7"]["PSNR"]) == ["00000.png", "00001.png", "00002.png"]
    want_psnr = [np_psnr(r, g) for r, g in good]
    np.testing.assert_allclose(list(per_view["ours_7"]["PSNR"].values()), want_psnr, rtol=1e-5)
    assert results["ours_7"]["PSNR"] == pytest.approx(np.mean(want_psnr), rel=1e-6)
    want_ssim = [numpy_ssim_map(r, g).mean() for r, g in good]
    np.testing.assert_allclose(list(per_view["ours_7"]["SSIM"].values()), want_ssim, rtol=1e-4, atol=1e-5)
    want_lpips = [lpips_scorer(torch.tensor(r, dtype=torch.float32), torch.tensor(g, dtype=torch.float32)).item()
                  for r, g in good]
    np.testing.assert_allclose(list(per_view["ours_7"]["LPIPS"].values()), want_lpips, rtol=1e-4, atol=1e-7)
    assert all(v > 0 for v in want_lpips)
    # val goes to its own files, same shape
    val = json.loads((model / "results_val.json").read_text())
    assert set(val) == {"ours_7"} and val["ours_7"]["LPIPS"] > 0
    assert len(json.loads((model / "per_view_val.json").read_text())["ours_7"]["SSIM"]) == 2
    assert "ours_7" in out and "PSNR" in out


def test_metrics_cli_without_lpips_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    model = tmp_path / "model"
    write_method(model, "test", "ours_3", 2, 0.05, seed=20)
    rc = metrics.main(["-m", str(model), "--device", "cpu", "--quiet", "--no_download"])
    out, err = capsys.readouterr()
    assert rc == 0
    results = json.loads((model / "results.json").read_text())
    assert results["ours_3"]["LPIPS"] is None
    assert mu.VGG16_FILENAME in results["ours_3"]["LPIPS_note"]
    assert results["ours_3"]["PSNR"] > 10 and 0 < results["ours_3"]["SSIM"] < 1
    per_view = json.loads((model / "per_view.json").read_text())
    assert per_view["ours_3"]["LPIPS"] == {"00000.png": None, "00001.png": None}
    assert "n/a" in out
    assert str(tmp_path / "empty_home" / "hub" / "checkpoints" / mu.VGG16_FILENAME) in err
    assert "--lpips_weights" in err
    assert not (model / "results_val.json").exists()


def test_metrics_cli_unreadable_png_and_explicit_split(tmp_path, capsys):
    model = tmp_path / "model"
    write_method(model, "test", "ours_1", 2, 0.05, seed=30)
    write_method(model, "test", "ours_2", 2, 0.05, seed=31)
    (model / "test/ours_2/renders/00000.png").write_bytes(b"\x89PNG garbage")
    rc = metrics.main(["-m", str(model), "--no_lpips", "--device", "cpu", "--quiet",
                       "--splits", "test", "val"])
    _, err = capsys.readouterr()
    assert rc == 1
    assert "ours_2/renders/00000.png: unreadable image" in err
    assert "no val folder" in err
    results = json.loads((model / "results.json").read_text())
    assert set(results) == {"ours_1"}
    assert results["ours_1"]["LPIPS_note"] == "LPIPS disabled (--no_lpips)"
