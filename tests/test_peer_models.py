"""benchmarks/peer_models.py: the CLIP BPE tokenizer folder visdex loads, and its ids equal rclip's.

The side-by-side benchmarks (benchmarks/startup.py, peers.py) are only fair if both tools run the
same model on the same token ids. A tiny merges file in CLIP's format stands in for the real
vocabulary (which ships in the open_clip_torch wheel, not here); the real one is used too when
found ($CLIP_BPE_VOCAB or an installed open_clip). rclip's own tokenizer runs in its interpreter:
$RCLIP_PYTHON, this one, or the ``rclip`` script's on PATH; without it those tests skip.
"""

from __future__ import annotations

import contextlib
import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import peer_models as pm  # noqa: E402

# CLIP's format: a header line, then one merge per line, most frequent first.
MERGES = ["d o", "do g</w>", "c a", "ca t</w>", "o n</w>", "b e", "be a", "bea c", "beac h</w>", "t h", "th e</w>"]
TEXTS = ["a dog on a beach", "A Photo of a CAT!", "the cat, the dog & 2 cafés", "x " * 100]


@pytest.fixture(scope="module")
def mini_bpe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bpe") / pm.BPE_NAME
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(["#version: 0.2", *MERGES]))  # no final newline: rclip would make it a token
    return path


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, mini_bpe) -> Path:
    return pm.build_clip_b32_256(tmp_path_factory.mktemp("clip") / "model", mini_bpe, tiny=True)


def _rclip_python() -> str:
    python = pm.rclip_python()
    if python is None:
        pytest.skip("rclip is not importable (set RCLIP_PYTHON to the interpreter rclip is installed in)")
    return python


def _ours(tok, texts: list[str]) -> list[list[int]]:
    return tok(texts, truncation=True, max_length=pm.CONTEXT_LENGTH)["input_ids"]


def test_visdex_loads_the_clip_bpe_model_folder(tiny_folder):
    from visdex.models import load_embedder

    emb = load_embedder(str(tiny_folder), device="cpu")
    assert emb.supports_text and emb.preprocess.size == pm.IMAGE_SIZE and emb.text_length == pm.CONTEXT_LENGTH
    n = len(emb.tokenizer)
    # "a</w>" is byte char 'a' (index 64 of CLIP's byte alphabet) + 256, as in the real vocabulary (320);
    # "dog</w>" is the token of the second merge (512 + 1): merges applied in order, end-of-word kept
    assert emb.tokenizer("a dog")["input_ids"] == [n - 2, 320, 513, n - 1]
    texts = emb.embed_texts(["a dog on a beach", "a cat"])
    images = emb.embed_images([Image.new("RGB", (400, 300), (200, 30, 30))])
    assert texts.shape == (2, 16) and images.shape == (1, 16)
    assert np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)


def test_token_ids_equal_rclips(mini_bpe):
    python = _rclip_python()
    vocabs = [mini_bpe]
    with contextlib.suppress(FileNotFoundError):  # without the real vocabulary the format check still runs
        vocabs.append(pm.find_bpe_vocab())
    for bpe in vocabs:
        theirs = pm.rclip_probe(python, bpe, TEXTS)["ids"]
        ours = _ours(pm.clip_bpe_tokenizer(bpe), TEXTS)
        # rclip pads to 77 with 0; the count of real tokens and every id must agree (long text: truncated to 77)
        assert ours == [[t for t in row if t] for row in theirs], bpe


def test_real_clip_vocabulary_known_ids():
    try:
        bpe = pm.find_bpe_vocab()
    except FileNotFoundError:
        pytest.skip("CLIP's bpe_simple_vocab_16e6.txt.gz not found (set CLIP_BPE_VOCAB or install open_clip_torch)")
    # OpenAI CLIP's ids for this sentence
    assert _ours(pm.clip_bpe_tokenizer(bpe), ["a photo of a dog"]) == [[49406, 320, 1125, 539, 320, 1929, 49407]]


@pytest.mark.slow
def test_rclip_export_gives_visdex_vectors(tmp_path, tiny_folder, mini_bpe):
    """The rclip data dir's ONNX towers compute what visdex computes from the folder (same weights)."""
    from visdex.decode import decode_image
    from visdex.models import load_embedder

    python = _rclip_python()
    datadir = tmp_path / "rclip"
    pm.export_rclip_datadir(tiny_folder, datadir, mini_bpe)
    img = tmp_path / "a.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8)).save(img, quality=95)
    got = pm.rclip_probe(python, mini_bpe, TEXTS[:3], datadir=datadir, images=[str(img)])
    emb = load_embedder(str(tiny_folder), device="cpu")
    text_cos = np.sum(emb.embed_texts(TEXTS[:3]) * np.asarray(got["text"]), axis=1)
    image = decode_image(img, draft_size=emb.preprocess.resize_to).image
    image_cos = float(emb.embed_images([image])[0] @ np.asarray(got["image"][0]))
    assert text_cos.min() > 0.9999 and image_cos > 0.99
