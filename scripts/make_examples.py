"""Write the sample photos in examples/photos from scikit-image's bundled data (run once; the
output is committed so a new user needs no scikit-image)."""

from pathlib import Path

import numpy as np
import skimage.data as data
from PIL import Image

NAMES = ["astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field", "coins", "moon", "grass", "brick"]

out = Path(__file__).resolve().parents[1] / "examples" / "photos"
out.mkdir(parents=True, exist_ok=True)
for name in NAMES:
    arr = getattr(data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    Image.fromarray(arr[..., :3]).save(out / f"{name}.jpg", quality=88)
print(f"wrote {len(NAMES)} photos to {out}")
