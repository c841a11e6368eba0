"""The training step and loop: losses, fused Adam step, CUDA-graph capture, loss window,
checkpoints, the :class:`~training.trainer.Trainer` and the :class:`~training.evaluator.Evaluator`.

``train.py`` is the command line over :mod:`training.trainer`. Modules are imported by name
(``from training.trainer import Trainer``); this file imports nothing.
"""
