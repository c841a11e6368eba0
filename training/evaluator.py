"""Periodic evaluation during training: L1 / PSNR / SSIM (and LPIPS when its weights are local)
on the val, test and a few training views, logged to TensorBoard."""
from __future__ import annotations

import os
from typing import Any, Dict, List

import torch

from arguments import PipelineParams
from training.losses import gt_image_on, is_bound

NUM_VIS_IMAGES = 4  # images per split written to TensorBoard at each evaluation


def lpips_weights_available() -> bool:
    """True when the VGG LPIPS weights are on disk (torchvision cache + lpips linear layers)."""
    try:
        import lpips
        from torchvision.models import VGG16_Weights
    except ImportError:
        return False
    vgg = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(VGG16_Weights.IMAGENET1K_V1.url))
    lin = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")
    return os.path.isfile(vgg) and os.path.isfile(lin)


class Evaluator:
    """Periodic L1 / PSNR / SSIM (and LPIPS when its weights are local) on val, test and a few
    training views. Consumes no random numbers (so resumed runs stay identical)."""

    def __init__(self, scene: Any, gaussians: Any, pipe: PipelineParams, background: torch.Tensor,
                 device: torch.device, tb_writer: Any, log: Any):
        self.scene, self.gaussians, self.pipe = scene, gaussians, pipe
        self.background, self.device, self.tb, self.log = background, device, tb_writer, log
        self._lpips: Any = None
        self._lpips_checked = False
        self._gt_logged: set = set()
        self.should_stop: Any = lambda: False  # set by the trainer: a signal aborts a long evaluation

    def _lpips_fn(self) -> Any:
        if not self._lpips_checked:
            self._lpips_checked = True
            if lpips_weights_available():
                import lpips

                self._lpips = lpips.LPIPS(net="vgg", verbose=False).to(self.device).eval()
            else:
                self.log.info("note: LPIPS (VGG) weights are not cached locally; evaluation skips LPIPS")
        return self._lpips

    def splits(self) -> List[tuple]:
        train = self.scene.getTrainCameras()
        train_views = [train[idx % len(train)] for idx in range(5, 30, 5)] if train else []
        return [("val", self.scene.getValCameras()), ("test", self.scene.getTestCameras()), ("train", train_views)]

    @torch.no_grad()
    def __call__(self, iteration: int) -> Dict[str, Dict[str, float]]:
        from gaussian_renderer import render
        from utils.image_utils import psnr
        from utils.loss_utils import l1_loss, ssim

        results: Dict[str, Dict[str, float]] = {}
        lp = self._lpips_fn()
        for name, cams in self.splits():
            if not cams:
                continue
            sums = torch.zeros(4, dtype=torch.float64, device=self.device)
            for idx, cam in enumerate(cams):
                if self.should_stop():
                    self.log.info(f"[ITER {iteration}] evaluation interrupted")
                    return results
                if is_bound(self.gaussians) and cam.timestep is not None:
                    self.gaussians.select_mesh_by_timestep(cam.timestep)
                image = torch.clamp(render(cam, self.gaussians, self.pipe, self.background)["render"], 0.0, 1.0)
                gt = gt_image_on(cam, self.device)
                if self.tb is not None and idx < NUM_VIS_IMAGES:
                    tag = f"{name}_view_{cam.image_name}".replace("/", "_")
                    self.tb.add_images(tag + "/render", image[None], global_step=iteration)
                    if tag not in self._gt_logged:
                        self._gt_logged.add(tag)
                        self.tb.add_images(tag + "/ground_truth", gt[None], global_step=iteration)
                sums[0] += l1_loss(image, gt).double()
                sums[1] += psnr(image, gt).double()
                sums[2] += ssim(image, gt).double()
                if lp is not None:
                    sums[3] += lp(image[None], gt[None], normalize=True).double().reshape(())
            vals = (sums / len(cams)).tolist()
            res = {"l1": vals[0], "psnr": vals[1], "ssim": vals[2]}
            if lp is not None:
                res["lpips"] = vals[3]
            results[name] = res
            msg = f"[ITER {iteration}] Evaluating {name}: L1 {vals[0]:.5f} PSNR {vals[1]:.3f} SSIM {vals[2]:.4f}"
            if lp is not None:
                msg += f" LPIPS {vals[3]:.4f}"
            self.log.info(msg)
            if self.tb is not None:
                for key, value in res.items():
                    self.tb.add_scalar(f"{name}/loss_viewpoint - {key}", value, iteration)
        if self.tb is not None:
            self.tb.add_histogram("scene/opacity_histogram", self.gaussians.get_opacity, iteration)
        return results
