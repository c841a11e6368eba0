"""The remote viewer link: the framed protocol (:mod:`viewer.protocol`), the training-side server
(:mod:`viewer.server`) and the viewer cameras (:mod:`viewer.camera`).

``remote_viewer.py`` and ``local_viewer.py`` are the entry points over it. This file imports
nothing, so ``viewer.protocol`` and ``viewer.camera`` load without torch.
"""
