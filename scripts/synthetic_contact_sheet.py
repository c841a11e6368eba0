"""Contact sheet of a synthetic subject: rows = timesteps, columns = cameras (on white).

    python scripts/synthetic_contact_sheet.py [--subject DIR] [--out docs/synthetic_contact_sheet.png]
        [--flame_dir D] [--cameras 0 4 8 12 15] [--timesteps ...]

Without --subject a subject is generated into a temporary folder (320x220, 16 cameras,
16 timesteps) with ``scene.synthetic``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_rgba_on_white(path: str) -> Image.Image:
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGBA")).astype(np.float32) / 255.0
    rgb = arr[..., :3] * arr[..., 3:] + (1.0 - arr[..., 3:])
    return Image.fromarray((rgb * 255 + 0.5).astype(np.uint8))


def make_sheet(subject: str, cameras, timesteps, out: str) -> None:
    with open(os.path.join(subject, "synthetic_info.json")) as f:
        info = json.load(f)
    W, H = info["width"], info["height"]
    pad, label_h = 4, 14
    sheet = Image.new("RGB", (len(cameras) * (W + pad) + pad + 40, len(timesteps) * (H + pad) + pad + label_h),
                      (235, 235, 235))
    draw = ImageDraw.Draw(sheet)
    for j, c in enumerate(cameras):
        draw.text((40 + pad + j * (W + pad) + 2, 1), f"cam {c}" + (" (front)" if c == info["front_camera"] else ""),
                  fill=(0, 0, 0))
    for i, t in enumerate(timesteps):
        split = "test" if t in info["test_timesteps"] else "train"
        draw.text((2, label_h + pad + i * (H + pad) + H // 2 - 10), f"t={t}\n{split}", fill=(0, 0, 0))
        for j, c in enumerate(cameras):
            img = load_rgba_on_white(os.path.join(subject, "images", f"{t:05d}_{c:02d}.png"))
            sheet.paste(img, (40 + pad + j * (W + pad), label_h + pad + i * (H + pad)))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    sheet.save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subject", default=None)
    ap.add_argument("--out", default="docs/synthetic_contact_sheet.png")
    ap.add_argument("--flame_dir", default=None)
    ap.add_argument("--cameras", type=int, nargs="+", default=[0, 4, 8, 12, 15])
    ap.add_argument("--timesteps", type=int, nargs="+", default=None)
    a = ap.parse_args()
    subject = a.subject
    if subject is None:
        from scene.synthetic import SyntheticConfig, generate

        subject = tempfile.mkdtemp(prefix="synthetic_subject_")
        generate(SyntheticConfig(out=subject, flame_dir=a.flame_dir, width=320, height=220, num_timesteps=16))
    with open(os.path.join(subject, "synthetic_info.json")) as f:
        info = json.load(f)
    T = info["num_timesteps"]
    timesteps = a.timesteps or sorted(set(np.linspace(0, T - 1, min(T, 6)).round().astype(int).tolist()))
    make_sheet(subject, a.cameras, timesteps, a.out)
    print(f"wrote {a.out} from {subject}")


if __name__ == "__main__":
    main()
