"""Side by side with the original GaussianAvatars: train both on one subject over several seeds,
render each model with its own render.py, score every render folder with our metrics.py, and
render the original's models with our render.py too.

    python benchmarks/compare_original.py --original ORIG --subject SUBJECT --flame_dir FLAME_DIR \\
        --out OUT --seeds 0 1 2 3 4 [--iterations 6000] [--parallel 5] [--variant NAME="FLAGS"]...

``ORIG`` is a checkout of the original assembled by ``../shared/original/assemble.sh`` with its two
CUDA packages built in place (``python setup.py build_ext --inplace``); it is read, never copied
into the project. ``FLAME_DIR`` holds ``flame2023.pkl`` and ``FLAME_masks.pkl`` (e.g. from
``python -m flame_model.template_rig``): they are copied into ``ORIG/flame_model/assets/flame``
(where the original looks for them) and passed to our side with ``--flame_model_path``.

Per seed and side: train (``benchmarks/run_seeded.py`` picks the original's seed, which it fixes
at 0, and records wall time and peak memory; each run gets its own viewer port), render val and
test, score with ``metrics.py --no_lpips`` (joint PSNR; the original's training log averages
per-channel PSNRs instead). Every original model is also copied (cfg_args, cameras.json,
point_cloud) to ``OUT/original_by_ours/seedK`` and rendered with our render.py: the table gives
the PSNR between the two renders of each view and both against ground truth. ``--variant``
adds sides of ours with extra flags (e.g. ``--variant ring_fit="--teeth ring_fit"``).

Output: the table on stdout and in ``OUT/compare.md``, everything in ``OUT/compare.json``; logs
under ``OUT/logs``. Runs go ``--parallel`` at a time per side, both sides at once, so it/s is
measured under that load (``benchmarks/bench_training.py`` measures ours alone). Runs already
scored in OUT are kept (``--fresh`` redoes them).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SEEDED = ROOT / "benchmarks" / "run_seeded.py"
SCHEDULE_6K = ("--iterations 6000 --position_lr_max_steps 6000 --densify_from_iter 500 --densify_until_iter 4800 "
               "--densification_interval 500 --opacity_reset_interval 3000")
SPLITS = ("val", "test")


@dataclass
class Side:
    name: str                     # "original", "ours", "ours-<variant>" or "before"
    extra: List[str] = field(default_factory=list)
    root: Path = ROOT             # the checkout whose train.py / render.py this side runs

    @property
    def is_original(self) -> bool:
        return self.name == "original"


@dataclass
class Config:
    original: Optional[Path]
    subject: Path
    flame_dir: Path
    out: Path
    seeds: List[int]
    schedule: List[str]
    iterations: int
    parallel: int
    sides: List[Side]
    fresh: bool
    python: str


# ----------------------------------------------------------------------------- running

def _run(cmd: List[str], log: Path, cwd: Path, env: Dict[str, str]) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(shlex.quote(c) for c in cmd) + f"\n(cwd {cwd})\n")
        fh.flush()
        return subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode


def _original_env(cfg: Config) -> Dict[str, str]:
    o = cfg.original
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in (
        o / "stubs", o, o / "submodules" / "diff-gaussian-rasterization", o / "submodules" / "simple-knn")]
        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _ours_env(root: Path = ROOT) -> Dict[str, str]:
    """Our side's environment: ``root``'s Python code over this checkout's built CUDA packages."""
    env = dict(os.environ)
    subs = [str(p) for p in sorted((ROOT / "submodules").iterdir()) if (p / "setup.py").is_file()]
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + subs + [env.get("PYTHONPATH", "")])
    return env


def _flame_flags(cfg: Config) -> List[str]:
    return ["--flame_model_path", str(cfg.flame_dir / "flame2023.pkl"),
            "--flame_masks_path", str(cfg.flame_dir / "FLAME_masks.pkl")]


def model_dir(cfg: Config, side: str, seed: int) -> Path:
    return cfg.out / side / f"seed{seed}"


def train_and_render(cfg: Config, side: Side, seed: int, port: int) -> Dict:
    """Train one model, render val/test with its own render.py, score them; returns its record."""
    m = model_dir(cfg, side.name, seed)
    logs = cfg.out / "logs" / side.name
    stats = logs / f"seed{seed}_stats.json"
    if cfg.fresh and m.exists():
        shutil.rmtree(m)
    record: Dict = {"side": side.name, "seed": seed, "model": str(m)}
    common = ["-s", str(cfg.subject), "-m", str(m), "--eval", "--white_background", "--bind_to_mesh",
              "--port", str(port), "--interval", str(cfg.iterations)] + cfg.schedule
    if side.is_original:
        cwd, env = cfg.original, _original_env(cfg)
        train = [cfg.python, str(SEEDED), "--stats", str(stats), "--seed", str(seed),
                 "--reseed_after", "utils.general_utils:safe_state", str(cfg.original / "train.py")] + common
        render = [cfg.python, str(cfg.original / "render.py"), "-m", str(m), "--skip_train"]
    else:
        cwd, env = side.root, _ours_env(side.root)
        train = [cfg.python, str(SEEDED), "--stats", str(stats), str(side.root / "train.py")] + common + [
            "--seed", str(seed)] + _flame_flags(cfg) + side.extra
        render = [cfg.python, str(side.root / "render.py"), "-m", str(m), "--skip_train", "--no_video",
                  "--quiet"] + _flame_flags(cfg)
    if not (m / "results.json").is_file():
        if m.exists():          # an unfinished run (a call cut short): start it again
            shutil.rmtree(m)
        t0 = time.perf_counter()
        rc = _run(train, logs / f"seed{seed}_train.log", cwd, env)
        record["train_rc"] = rc
        if rc != 0:
            record["error"] = f"training failed (rc {rc}): see {logs / f'seed{seed}_train.log'}"
            return record
        record["train_s"] = time.perf_counter() - t0
        rc = _run(render, logs / f"seed{seed}_render.log", cwd, env)
        if rc != 0:
            record["error"] = f"render.py failed (rc {rc}): see {logs / f'seed{seed}_render.log'}"
            return record
        score(cfg, m, logs / f"seed{seed}_metrics.log")
    record.update(read_scores(m))
    record.update(read_run_stats(stats, logs / f"seed{seed}_train.log", cfg.iterations))
    record["splats"] = count_splats(m)
    if side.is_original:
        record["by_ours"] = render_original_with_ours(cfg, m, seed)
    return record


def score(cfg: Config, model: Path, log: Path) -> None:
    cmd = [cfg.python, str(ROOT / "metrics.py"), "-m", str(model), "--no_lpips", "--quiet"]
    rc = _run(cmd, log, ROOT, _ours_env())
    if rc != 0:
        raise RuntimeError(f"metrics.py failed on {model}: see {log}")


def render_original_with_ours(cfg: Config, model: Path, seed: int) -> Dict:
    """Our render.py (and metrics.py) on a copy of an original-trained model folder, and the PSNR
    between the two renders of every view."""
    dst = cfg.out / "original_by_ours" / f"seed{seed}"
    logs = cfg.out / "logs" / "original_by_ours"
    if not (dst / "results.json").is_file():
        if dst.exists():
            shutil.rmtree(dst)
        dst.mkdir(parents=True)
        for name in ("cfg_args", "cameras.json"):
            shutil.copy2(model / name, dst / name)
        shutil.copytree(model / "point_cloud", dst / "point_cloud")
        cmd = [cfg.python, str(ROOT / "render.py"), "-m", str(dst), "--skip_train", "--no_video", "--quiet"] + \
            _flame_flags(cfg)
        rc = _run(cmd, logs / f"seed{seed}_render.log", ROOT, _ours_env())
        if rc != 0:
            return {"error": f"our render.py failed on the original's model (rc {rc}): see {logs}"}
        score(cfg, dst, logs / f"seed{seed}_metrics.log")
    out = read_scores(dst)
    for split in SPLITS:
        a, b = _renders(model, split), _renders(dst, split)
        if a is None or b is None:
            continue
        names = sorted(os.listdir(a))
        out[f"{split}_psnr_vs_original_render"] = float(np.mean([psnr_files(a / n, b / n) for n in names]))
    return out


# ----------------------------------------------------------------------------- reading results

def _renders(model: Path, split: str) -> Optional[Path]:
    d = model / split
    if not d.is_dir():
        return None
    methods = sorted((p for p in d.iterdir() if p.name.startswith("ours_")), key=lambda p: int(p.name[5:]))
    return methods[-1] / "renders" if methods else None


def psnr_files(a: Path, b: Path) -> float:
    from PIL import Image
    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.float64) / 255.0
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.float64) / 255.0
    mse = float(np.mean((x - y) ** 2))
    return 100.0 if mse <= 1e-10 else -10.0 * math.log10(mse)


def read_scores(model: Path) -> Dict:
    out: Dict = {}
    for split, name in (("test", "results.json"), ("val", "results_val.json")):
        path = model / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        method = max(data, key=lambda k: int(k.split("_")[-1]) if k.split("_")[-1].isdigit() else -1)
        out[f"{split}_psnr"] = data[method]["PSNR"]
        out[f"{split}_ssim"] = data[method]["SSIM"]
    return out


def read_run_stats(stats: Path, log: Path, iterations: int) -> Dict:
    out: Dict = {}
    if stats.is_file():
        s = json.loads(stats.read_text())
        out["wall_s"] = s["wall_s"]
        out["peak_memory_gib"] = s["peak_memory_bytes"] / 2 ** 30
        out["it_per_s_wall"] = iterations / s["wall_s"] if s["wall_s"] > 0 else None
    if log.is_file():   # the training bar's rate when it first reached the last iteration
        import re
        for done, total, rate in re.findall(r"(\d+)/(\d+) \[[^\]]*?(\d+(?:\.\d+)?)it/s",
                                            log.read_text(errors="replace")):
            if done == total == str(iterations):
                out["it_per_s_bar"] = float(rate)
                break
    return out


def count_splats(model: Path) -> Optional[int]:
    pc = model / "point_cloud"
    if not pc.is_dir():
        return None
    its = sorted((p for p in pc.iterdir() if p.name.startswith("iteration_")), key=lambda p: int(p.name[10:]))
    if not its:
        return None
    with open(its[-1] / "point_cloud.ply", "rb") as fh:
        for raw in fh:
            line = raw.decode("ascii", "replace").strip()
            if line.startswith("element vertex"):
                return int(line.split()[-1])
            if line == "end_header":
                break
    return None


# ----------------------------------------------------------------------------- summary

METRICS = ("val_psnr", "test_psnr", "val_ssim", "test_ssim", "it_per_s_bar", "it_per_s_wall", "splats",
           "peak_memory_gib")


def stats_of(values: List[float]) -> Dict[str, float]:
    v = [float(x) for x in values if x is not None]
    if not v:
        return {}
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "min": min(v), "max": max(v), "n": len(v)}


def summarize(records: List[Dict], sides: List[Side]) -> Dict:
    summary: Dict = {"sides": {}, "by_ours": {}, "diff_vs_original": {}}
    for side in sides:
        rows = [r for r in records if r["side"] == side.name and "error" not in r]
        summary["sides"][side.name] = {m: stats_of([r.get(m) for r in rows]) for m in METRICS}
        summary["sides"][side.name]["seeds"] = [r["seed"] for r in rows]
    cross = [r["by_ours"] for r in records if r["side"] == "original" and "by_ours" in r
             and "error" not in r["by_ours"]]
    for key in ("val_psnr", "test_psnr", "val_ssim", "test_ssim", "val_psnr_vs_original_render",
                "test_psnr_vs_original_render"):
        summary["by_ours"][key] = stats_of([c.get(key) for c in cross])
    base = summary["sides"].get("original", {})
    for side in sides:
        if side.is_original or not base:
            continue
        mine = summary["sides"][side.name]
        summary["diff_vs_original"][side.name] = {
            m: mine[m]["mean"] - base[m]["mean"] for m in METRICS if mine.get(m) and base.get(m)}
    return summary


def _fmt(s: Dict[str, float], digits: int = 2) -> str:
    if not s:
        return "n/a"
    return (f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} "
            f"[{s['min']:.{digits}f}, {s['max']:.{digits}f}]")


def table(summary: Dict, cfg: Config) -> str:
    lines = [f"subject {cfg.subject.name}, {cfg.iterations} iterations, seeds {' '.join(map(str, cfg.seeds))}, "
             f"{cfg.parallel} runs at a time per side; mean ± std [min, max]; PSNR/SSIM from our metrics.py "
             "(joint PSNR)", "",
             "| side | val PSNR | test PSNR | val SSIM | test SSIM | it/s (bar) | splats | peak GiB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, s in summary["sides"].items():
        lines.append(f"| {name} | {_fmt(s['val_psnr'])} | {_fmt(s['test_psnr'])} | {_fmt(s['val_ssim'], 4)} | "
                     f"{_fmt(s['test_ssim'], 4)} | {_fmt(s['it_per_s_bar'], 0)} | {_fmt(s['splats'], 0)} | "
                     f"{_fmt(s['peak_memory_gib'])} |")
    for name, d in summary["diff_vs_original"].items():
        lines.append(f"| {name} - original (means) | {d.get('val_psnr', math.nan):+.3f} | "
                     f"{d.get('test_psnr', math.nan):+.3f} | {d.get('val_ssim', math.nan):+.4f} | "
                     f"{d.get('test_ssim', math.nan):+.4f} | {d.get('it_per_s_bar', math.nan):+.0f} | "
                     f"{d.get('splats', math.nan):+.0f} | {d.get('peak_memory_gib', math.nan):+.2f} |")
    b = summary["by_ours"]
    if b.get("val_psnr"):
        lines += ["", "The original's models rendered by our render.py:", "",
                  "| | val | test |", "| --- | --- | --- |",
                  f"| PSNR vs the original's own render | {_fmt(b['val_psnr_vs_original_render'])} | "
                  f"{_fmt(b['test_psnr_vs_original_render'])} |",
                  f"| PSNR vs ground truth (ours rendering) | {_fmt(b['val_psnr'])} | {_fmt(b['test_psnr'])} |",
                  f"| SSIM vs ground truth (ours rendering) | {_fmt(b['val_ssim'], 4)} | {_fmt(b['test_ssim'], 4)} |"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def prepare_original(cfg: Config) -> None:
    dst = cfg.original / "flame_model" / "assets" / "flame"
    for name in ("flame2023.pkl", "FLAME_masks.pkl"):
        src = cfg.flame_dir / name
        if not src.is_file():
            raise SystemExit(f"{src} is missing: --flame_dir must hold flame2023.pkl and FLAME_masks.pkl")
        shutil.copyfile(src, dst / name)


def parse_args(argv: Optional[List[str]] = None) -> Config:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--original", type=Path, default=None, help="assembled and built original checkout")
    ap.add_argument("--subject", type=Path, required=True)
    ap.add_argument("--flame_dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--schedule", default=SCHEDULE_6K, help="training flags both sides get (quoted)")
    ap.add_argument("--parallel", type=int, default=5, help="runs at a time per side")
    ap.add_argument("--variant", action="append", default=[], metavar='NAME="FLAGS"',
                    help="an extra side of ours trained with these flags")
    ap.add_argument("--before_root", type=Path, default=None,
                    help="an older checkout of ours (Python code only) trained as side 'before'")
    ap.add_argument("--skip_original", action="store_true")
    ap.add_argument("--skip_ours", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="retrain runs already in OUT")
    a = ap.parse_args(argv)
    schedule = shlex.split(a.schedule)
    if "--iterations" not in schedule:
        raise SystemExit("--schedule must contain --iterations N")
    iterations = int(schedule[schedule.index("--iterations") + 1])
    sides: List[Side] = []
    if not a.skip_original:
        if a.original is None or not (a.original / "train.py").is_file():
            raise SystemExit("--original must be a checkout of the original (with train.py), or pass --skip_original")
        sides.append(Side("original"))
    if not a.skip_ours:
        sides.append(Side("ours"))
    if a.before_root is not None:
        if not (a.before_root / "train.py").is_file():
            raise SystemExit(f"--before_root {a.before_root} has no train.py")
        sides.append(Side("before", root=a.before_root.resolve()))
    for v in a.variant:
        name, sep, flags = v.partition("=")
        if not sep or not name:
            raise SystemExit(f"--variant wants NAME=\"FLAGS\", got {v!r}")
        sides.append(Side(f"ours-{name}", shlex.split(flags)))
    return Config(original=a.original.resolve() if a.original else None, subject=a.subject.resolve(),
                  flame_dir=a.flame_dir.resolve(), out=a.out.resolve(), seeds=a.seeds, schedule=schedule,
                  iterations=iterations, parallel=max(1, a.parallel), sides=sides, fresh=a.fresh,
                  python=sys.executable)


def main(argv: Optional[List[str]] = None) -> int:
    cfg = parse_args(argv)
    cfg.out.mkdir(parents=True, exist_ok=True)
    if any(s.is_original for s in cfg.sides):
        prepare_original(cfg)
    jobs = []
    pools = {s.name: ThreadPoolExecutor(cfg.parallel) for s in cfg.sides}
    port = 6100
    for seed in cfg.seeds:
        for side in cfg.sides:
            port += 1
            jobs.append(pools[side.name].submit(train_and_render, cfg, side, seed, port))
    records = []
    for job in jobs:
        try:
            records.append(job.result())
        except Exception as exc:  # one failed run must not lose the others' figures
            records.append({"side": "?", "error": f"{type(exc).__name__}: {exc}"})
    for pool in pools.values():
        pool.shutdown()
    summary = summarize(records, cfg.sides)
    text = table(summary, cfg)
    errors = [r for r in records if "error" in r]
    if errors:
        text += "\n\nFailed runs:\n" + "\n".join(f"- {r.get('side')} seed {r.get('seed')}: {r['error']}" for r in errors)
    (cfg.out / "compare.md").write_text(text + "\n")
    (cfg.out / "compare.json").write_text(json.dumps({"records": records, "summary": summary,
                                                      "schedule": cfg.schedule, "seeds": cfg.seeds}, indent=1))
    print(text)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
