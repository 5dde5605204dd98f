"""The ``photos`` data set: real photographs shipped inside installed packages, cut into crops.

Seven colour photographs, read from files inside the installed wheels (nothing is
downloaded): scikit-learn's two sample images and five of scikit-image's bundled ones.  Each
is resized (PIL, bilinear, antialiased) so its short side is 224, 288 and 352 pixels, and at
each size cut into 224x224 crops on a 3x3 grid of offsets (top/left, centre, bottom/right of
the free range; duplicates dropped), each crop also mirrored left-right.  The split is by
source image, so calibration and test crops share no pixel:

- ``calibration``: china, flower (scikit-learn), rocket, motorcycle (scikit-image), 168 crops;
- ``test``: chelsea (a cat), coffee, astronaut (scikit-image), 122 crops.

The photographs have no labels: :func:`load` returns ``y = None``, and the optimizer judges
a candidate on them by its fidelity to the fp32 model (top-1 agreement, cosine similarity).

Crops are kept as uint8 in a :func:`functools.lru_cache`; every call returns a fresh float32
array, normalized for ``efficientnet-lite0``: ``(rgb - 127) / 128`` in NCHW.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError, EdgebenchError

__all__ = ["IMAGES", "MEAN", "SPLITS", "STD", "Crop", "crops", "load"]

#: Same values as ``_zoo_efficientnet.MEAN`` / ``STD`` (kept here so no torch is imported).
MEAN, STD = 127.0, 128.0
SIZE = 224
SHORT_SIDES = (224, 288, 352)
_GRID = (0.0, 0.5, 1.0)

#: source image -> (package, loader name); the order fixes the order of the crops
IMAGES: dict[str, tuple[str, str]] = {
    "china": ("sklearn", "china.jpg"),
    "flower": ("sklearn", "flower.jpg"),
    "rocket": ("skimage", "rocket"),
    "motorcycle": ("skimage", "stereo_motorcycle"),
    "chelsea": ("skimage", "chelsea"),
    "coffee": ("skimage", "coffee"),
    "astronaut": ("skimage", "astronaut"),
}
SPLITS: dict[str, tuple[str, ...]] = {
    "calibration": ("china", "flower", "rocket", "motorcycle"),
    "test": ("chelsea", "coffee", "astronaut"),
}


@dataclass(frozen=True)
class Crop:
    """Where one crop came from: source image, its resized short side, the box, the mirror."""

    image: str
    short_side: int
    top: int
    left: int
    flipped: bool


def _missing(package: str, pip_name: str) -> EdgebenchError:
    return EdgebenchError(f"the 'photos' data set reads images bundled with {package}, which is not installed",
                          f"pip install {pip_name} (or edgebench[zoo])")


def _photo(name: str) -> np.ndarray:
    """The photograph as uint8 RGB (H, W, 3), read from the installed package's own files."""
    package, item = IMAGES[name]
    if package == "sklearn":
        try:
            from sklearn.datasets import load_sample_image
        except ImportError:  # pragma: no cover - scikit-learn is a core dependency
            raise _missing("scikit-learn", "scikit-learn") from None
        img = load_sample_image(item)
    else:
        try:
            import skimage.data
        except ImportError:
            raise _missing("scikit-image", "scikit-image") from None
        img = getattr(skimage.data, item)()
        if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity); the left view
            img = img[0]
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:  # pragma: no cover - a changed package
        raise EdgebenchError(f"photo {name!r} from {package} is {img.dtype}{list(img.shape)}, not uint8 RGB",
                             "report this: the package changed its bundled image")
    return img


def _cut(name: str, img: np.ndarray) -> tuple[list[np.ndarray], list[Crop]]:
    from PIL import Image

    h, w = img.shape[:2]
    pil = Image.fromarray(img)
    out, meta = [], []
    for short in SHORT_SIDES:
        scale = short / min(h, w)
        rw, rh = max(SIZE, round(w * scale)), max(SIZE, round(h * scale))
        resized = np.asarray(pil.resize((rw, rh), Image.BILINEAR, reducing_gap=None))
        boxes = sorted({(round(fy * (rh - SIZE)), round(fx * (rw - SIZE))) for fy in _GRID for fx in _GRID})
        for top, left in boxes:
            crop = resized[top:top + SIZE, left:left + SIZE]
            for flipped in (False, True):
                out.append(crop[:, ::-1] if flipped else crop)
                meta.append(Crop(name, short, top, left, flipped))
    return out, meta


@functools.lru_cache(maxsize=None)
def crops(split: str) -> tuple[np.ndarray, tuple[Crop, ...]]:
    """The uint8 crops (n, 224, 224, 3) of ``split`` and where each came from (cached, read-only)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} of data set 'photos'", f"use one of {', '.join(SPLITS)}")
    arrays, meta = [], []
    for name in SPLITS[split]:
        a, m = _cut(name, _photo(name))
        arrays += a
        meta += m
    X = np.stack(arrays)
    X.flags.writeable = False
    return X, tuple(meta)


def load(split: str) -> tuple[np.ndarray, None]:
    """``(X, None)``: float32 (n, 3, 224, 224), ``(rgb - 127) / 128``; a fresh array each call."""
    X, _ = crops(split)
    out = np.empty((len(X), 3, SIZE, SIZE), dtype=np.float32)
    np.subtract(X.transpose(0, 3, 1, 2), np.float32(MEAN), out=out, dtype=np.float32)
    out /= np.float32(STD)
    return out, None
