"""Shared inputs for the family proof tests: real photos written as the files users have, and texts.

Photos come from scikit-image (real camera images). Each is stored the way it breaks pipelines:
non-square PNG, a JPEG with an EXIF orientation, 8-bit grayscale, RGBA with a soft alpha edge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

TEXTS = [
    "a photo of a cat",
    "a rocket on the launch pad",
    "",
    "a very long description of a scene with many objects, colours, people, animals, buildings, cars, trees, "
    "rivers, mountains and clouds, far longer than any text tower accepts at once, so it must be truncated at "
    "the model's context length exactly as the library truncates it " * 3,
]


def write_photos(folder: Path) -> list[Path]:
    """Five real photos as files: non-square RGB PNG, JPEG, EXIF-rotated JPEG (orientation 6), grayscale, RGBA."""
    import skimage.data as data

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    chelsea = Image.fromarray(data.chelsea())  # 451 x 300
    out.append(folder / "chelsea.png")
    chelsea.save(out[-1])
    out.append(folder / "coffee.jpg")
    Image.fromarray(data.coffee()).save(out[-1], quality=92)
    rocket = Image.fromarray(data.rocket())  # 427 x 640, stored lying on its side with orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    out.append(folder / "rocket-exif6.jpg")
    rocket.transpose(Image.Transpose.ROTATE_90).save(out[-1], quality=92, exif=exif)
    out.append(folder / "camera-gray.png")
    Image.fromarray(data.camera()).save(out[-1])  # mode L
    astro = np.asarray(Image.fromarray(data.astronaut()).resize((400, 300)))
    alpha = np.tile(np.linspace(0, 255, astro.shape[1], dtype=np.uint8), (astro.shape[0], 1))
    out.append(folder / "astronaut-rgba.png")
    Image.fromarray(np.dstack([astro, alpha]), "RGBA").save(out[-1])
    return out


def visdex_images(files: list[Path]) -> list[Image.Image]:
    """What visdex's decoder hands the embedder (full decode, no draft mode)."""
    from visdex.decode import decode_image

    return [decode_image(f).image for f in files]


def library_images(files: list[Path]) -> list[Image.Image]:
    """What a user of the library would pass: the file opened with EXIF applied. Transparency goes on white,
    as visdex and transformers' processors composite it (OpenCLIP's and timm's transforms would drop alpha)."""
    images = []
    for f in files:
        im = ImageOps.exif_transpose(Image.open(f))
        if im.mode == "RGBA":
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, im).convert("RGB")
        images.append(im)
    return images


def cosines(a, b) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def clip_bpe_tokenizer(model_max_length: int = 77):
    """The real CLIP BPE tokenizer as a transformers fast tokenizer (what ``openai/clip-vit-base-patch32`` has),
    built offline from the vocabulary in OpenCLIP's wheel."""
    from visdex.models.families.openclip import clip_bpe_tokenizer as build

    return build(model_max_length)
