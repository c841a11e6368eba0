"""Named vertex / face regions of the FLAME mesh (FLAME_masks.pkl regions + teeth, eyeballs, ...)."""
from __future__ import annotations

from typing import Dict, Iterable, List, Union

import numpy as np
import torch

# Extra union regions built from the file's regions when all parts are present.
UNIONS = {"eyeballs": ("left_eyeball", "right_eyeball")}


class FlameMask(torch.nn.Module):
    """Region name -> vertex ids and face ids (a face is in a region when all its vertices are).

    Ids are int64 buffers, so they follow ``FlameHead.to(device)``.
    """

    def __init__(self, vertex_regions: Dict[str, np.ndarray], faces: np.ndarray, num_verts: int) -> None:
        super().__init__()
        regions = {k: np.unique(np.asarray(v, dtype=np.int64)) for k, v in vertex_regions.items()}
        for name, parts in UNIONS.items():
            if name not in regions and all(p in regions for p in parts):
                regions[name] = np.unique(np.concatenate([regions[p] for p in parts]))
        faces = np.asarray(faces, dtype=np.int64)
        self._names: List[str] = sorted(regions)
        self._keys: Dict[str, str] = {}
        self.num_verts = num_verts
        for i, name in enumerate(self._names):
            vid = regions[name]
            if vid.size and (vid.min() < 0 or vid.max() >= num_verts):
                raise ValueError(f"mask region '{name}' has vertex ids outside [0, {num_verts})")
            inside = np.zeros(num_verts, dtype=bool)
            inside[vid] = True
            fid = np.nonzero(inside[faces].all(axis=1))[0]
            key = f"r{i}"
            self._keys[name] = key
            self.register_buffer(f"vid_{key}", torch.from_numpy(vid), persistent=False)
            self.register_buffer(f"fid_{key}", torch.from_numpy(fid.astype(np.int64)), persistent=False)

    @property
    def names(self) -> List[str]:
        return list(self._names)

    def _get(self, prefix: str, name: Union[str, Iterable[str]]) -> torch.Tensor:
        if isinstance(name, str):
            if name not in self._keys:
                raise KeyError(f"unknown FLAME region '{name}'; known: {', '.join(self._names)}")
            return getattr(self, f"{prefix}_{self._keys[name]}")
        parts = [self._get(prefix, n) for n in name]
        return torch.unique(torch.cat(parts)) if parts else torch.zeros(0, dtype=torch.long)

    def get_vid(self, name: Union[str, Iterable[str]]) -> torch.Tensor:
        """Sorted vertex ids of a region (or the union of several)."""
        return self._get("vid", name)

    def get_fid(self, name: Union[str, Iterable[str]]) -> torch.Tensor:
        """Sorted face ids of a region (or the union of several: faces in any of them)."""
        return self._get("fid", name)

    def vertex_mask(self, name: Union[str, Iterable[str]]) -> torch.Tensor:
        """Boolean (V,) mask of a region."""
        vid = self.get_vid(name)
        m = torch.zeros(self.num_verts, dtype=torch.bool, device=vid.device)
        m[vid] = True
        return m
