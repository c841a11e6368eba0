"""FLAME head model: chumpy-free loading, LBS, teeth, region masks, procedural stand-in head."""
from .flame import FlameHead  # noqa: F401
from .loader import FlameAssetError, UnsafePickleError  # noqa: F401
