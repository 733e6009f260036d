"""OpenCLIP (``pip install 'visdex[openclip]'``): LAION, DataComp, DFN, MetaCLIP and MobileCLIP weights.

Names: ``open_clip:ARCH/PRETRAINED`` (``open_clip:ViT-B-32/laion2b_s34b_b79k``, the tags of
``open_clip.list_pretrained()``), ``open_clip:hf-hub:<repo>``, ``open_clip:local-dir:<folder>``, or a
folder holding ``open_clip_config.json``. Vectors are ``encode_image`` / ``encode_text`` with the
model's own tokenizer; preprocessing is the model's ``preprocess_cfg`` (what
``create_model_and_transforms`` builds its transform from), run by visdex's numpy
:class:`~visdex.models.base.Preprocess` with torchvision's centre-crop rounding.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import MissingDependency, ModelLoadError, UnknownModel
from ..base import Embedder, Fingerprint, Preprocess, l2_normalize
from .base import Family, FamilyProfile, ModelRef, torch_batches

_CONFIG = "open_clip_config.json"
_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_SCHEMES = ("hf-hub:", "local-dir:")


def require_open_clip():
    try:
        import open_clip
    except ImportError as exc:
        raise MissingDependency("open-clip-torch", extra="openclip", purpose="open_clip: models") from exc
    return open_clip


def split_source(source: str) -> tuple[str, str | None]:
    """``"ViT-B-32/laion2b_s34b_b79k"`` -> ``("ViT-B-32", "laion2b_s34b_b79k")``; a scheme name passes whole.

    >>> split_source("hf-hub:apple/MobileCLIP2-S0-OpenCLIP")
    ('hf-hub:apple/MobileCLIP2-S0-OpenCLIP', None)
    """
    if source.startswith(_SCHEMES):
        return source, None
    arch, _, tag = source.partition("/")
    return arch, (tag or None)


def preprocess_from_cfg(cfg: dict) -> Preprocess:
    """visdex's :class:`Preprocess` for an OpenCLIP ``preprocess_cfg`` (size, mean, std, interpolation, resize_mode).

    >>> preprocess_from_cfg({"size": 224, "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bicubic",
    ...                      "resize_mode": "shortest"}).crop
    'round'
    """
    size = cfg.get("size", 224)
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ModelLoadError(f"OpenCLIP input size {tuple(size)} is not square; visdex needs a square input")
        size = size[0]
    mode = cfg.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise ModelLoadError(f"OpenCLIP resize_mode {mode!r} is not supported (shortest and squash are)")
    interp = cfg.get("interpolation", "bicubic")
    if interp not in ("bicubic", "bilinear"):
        raise ModelLoadError(f"OpenCLIP interpolation {interp!r} is not supported (bicubic and bilinear are)")
    return Preprocess(size=int(size), resize_to=int(size), mode=mode, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                      resample=interp, crop="round")  # fmt: skip


class OpenClipEmbedder(Embedder):
    """An OpenCLIP model: ``encode_image`` / ``encode_text``, its own tokenizer, its own preprocessing config.

    ``OpenClipEmbedder(model, tokenizer, name=..., source=..., revision=...)`` wraps a model already made by
    ``open_clip.create_model`` (tests use random weights this way); :func:`load` makes one from a name.
    """

    family = "open_clip"

    def __init__(self, model, tokenizer, *, name: str, source: str, revision: str, device: str = "cpu",
                 batch_size: int | None = None):  # fmt: skip
        import torch

        self.name, self.source, self.revision, self.device = name, source, revision, device
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.batch_size = batch_size or (64 if device.startswith("cuda") else 16)
        self.model = model.eval().to(device=device, dtype=self.dtype)
        self.tokenizer = tokenizer
        self.preprocess = preprocess_from_cfg(dict(model.visual.preprocess_cfg))
        # bf16 on an AMX CPU by default for a ViT image tower only (ResNet / ConvNeXt / MobileCLIP stay fp32)
        self.cpu_bf16_auto = type(model.visual).__name__ == "VisionTransformer"
        self.modalities = frozenset({"image", "text"} if tokenizer is not None else {"image"})
        with torch.inference_mode():
            probe = torch.zeros(1, 3, self.preprocess.size, self.preprocess.size, device=device, dtype=self.dtype)
            self.dim = int(self.model.encode_image(probe).shape[-1])
        self.context_length = int(getattr(tokenizer, "context_length", 0) or getattr(model, "context_length", 77))

    def image_tower(self, x):
        return self.model.encode_image(x)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return l2_normalize(torch_batches(self, pixels, self.image_tower))

    def _embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        outs = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                # the model's own tokenizer: truncates at the context length, end-of-text token kept last
                tokens = self.tokenizer(texts[start : start + self.batch_size]).to(self.device)
                outs.append(self.model.encode_text(tokens).float().cpu().numpy())
        return np.concatenate(outs)

    def fingerprint(self) -> Fingerprint:
        return Fingerprint(name=self.name, source=self.source, revision=self.revision, dim=self.dim,
                           preprocessing=json.loads(json.dumps(self.preprocess.to_dict())),
                           modalities=tuple(m for m in ("text", "image") if m in self.modalities))  # fmt: skip


def _model_name(ref: ModelRef) -> str:
    return f"local-dir:{ref.source}" if ref.local else ref.source


def revision(model_name: str) -> str:
    """The weights version, without importing torch: a named release is its tag (OpenCLIP's tags name fixed
    files); a hub repo the snapshot it was downloaded at; a local folder the sha256 of its weights."""
    from ..hf import cached_hash_files

    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:") :])
        files = [folder / f for f in _WEIGHTS if (folder / f).is_file()]
        return cached_hash_files(files) if files else "unknown"
    if model_name.startswith("hf-hub:"):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model_name[len("hf-hub:") :], _CONFIG)
        return Path(cached).parent.name if isinstance(cached, str) else "unknown"
    arch, tag = split_source(model_name)
    return f"{arch}/{tag}"


class OpenClipFamily(Family):
    name = "open_clip"
    catalog_families = ("open_clip",)
    prefixes = ("open_clip:",)
    order = 10  # an OpenCLIP hub folder may hold a config.json too: claim it before transformers does
    profile = FamilyProfile(
        good_for="text and image search with open weights: LAION, DataComp, DFN, MetaCLIP; MobileCLIP for fast CPU",
        contrastive_loss="InfoNCE (CLIP's symmetric cross-entropy over in-batch negatives; larger batches help)",
    )

    def claims_dir(self, path: Path) -> bool:
        return (path / _CONFIG).is_file()

    def load(self, ref: ModelRef, device: str, batch_size: int | None) -> Embedder:
        open_clip = require_open_clip()
        model_name = _model_name(ref)
        arch, tag = split_source(model_name)
        if not model_name.startswith(_SCHEMES):
            if arch not in open_clip.list_models():
                raise UnknownModel(ref.name, [f"open_clip:{a}/<pretrained>" for a in open_clip.list_models()])
            if tag is None:  # random weights would make meaningless vectors
                tags = open_clip.list_pretrained_tags_by_model(arch)
                raise UnknownModel(ref.name, [f"open_clip:{arch}/{t}" for t in tags])
        try:
            from ..hf import quiet_transformers

            with quiet_transformers():
                model = open_clip.create_model(arch, pretrained=tag, device=device, require_pretrained=True)
                tokenizer = open_clip.get_tokenizer(arch)
        except (UnknownModel, MissingDependency):
            raise
        except Exception as exc:  # hub, network, missing or broken files, an unknown tag: one typed error
            from ..hf import short_reason

            raise ModelLoadError(f"could not load OpenCLIP model {ref.name!r}: {short_reason(exc)}") from exc
        return OpenClipEmbedder(model, tokenizer, name=ref.name, source=model_name, revision=revision(model_name),
                                device=device, batch_size=batch_size)  # fmt: skip

    def identity(self, ref: ModelRef) -> dict:
        model_name = _model_name(ref)
        return {"source": model_name, "revision": revision(model_name), "family": self.name}

    def image_forward(self, emb):
        return emb.image_tower, l2_normalize

    def onnx_towers(self, emb, pixels) -> dict:
        import torch

        class ImageTower(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = emb.model

            def forward(self, pixels):
                return self.model.encode_image(pixels)

        towers: dict[str, tuple[torch.nn.Module, tuple, list[str], str]] = {
            "image": (ImageTower(), (pixels,), ["pixels"], "transformer")
        }
        tokenizer = self.export_tokenizer(emb)
        if tokenizer is not None:  # the CLIP BPE: a text tower fed by token ids, padded like OpenCLIP pads

            class TextTower(torch.nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.model = emb.model

                def forward(self, input_ids):
                    return self.model.encode_text(input_ids)

            example = emb.tokenizer(["a photo", "a photo of a cat on a sofa"])
            towers["text"] = (TextTower(), (example,), ["input_ids"], "transformer")
        return towers

    def caption_training(self, emb):
        if emb.tokenizer is None:
            return None
        from .base import CaptionTraining

        model = emb.model
        text = getattr(model, "text", None)  # CustomTextCLIP (MobileCLIP, SigLIP, HF text towers) keeps it apart
        if text is None:
            parts = [model.transformer, model.token_embedding, model.positional_embedding, model.ln_final]
            text_tower = (parts + [model.text_projection], _blocks(model), [model.ln_final, model.text_projection])
        else:
            text_tower = ([text], _blocks(text), [getattr(text, n, None) for n in ("ln_final", "text_projection")])
        return CaptionTraining(
            towers={"image": _image_tower(model.visual), "text": _clean(text_tower)},
            image_features=emb.image_tower,
            text_features=lambda texts: model.encode_text(emb.tokenizer(texts).to(emb.device)),
            logit_scale=model.logit_scale,
            logit_bias=getattr(model, "logit_bias", None),  # OpenCLIP's SigLIP models: the sigmoid loss
            save=lambda merged, folder: save_folder(emb, merged, folder),
        )

    def export_tokenizer(self, emb):
        """OpenCLIP's own CLIP BPE tokenizer as a transformers fast tokenizer (same ids, checked at export);
        None for models whose tokenizer is something else (their text queries run torch)."""
        from open_clip.tokenizer import SimpleTokenizer

        if not isinstance(emb.tokenizer, SimpleTokenizer) or emb.tokenizer.context_length != emb.context_length:
            return None
        # Padding with end-of-text instead of OpenCLIP's 0 changes nothing: attention is causal and the tower
        # pools at the first end-of-text token.
        return clip_bpe_tokenizer(emb.context_length)

    def tokenizer_settings(self, emb) -> dict:
        return {"max_length": emb.context_length, "padding": "max_length", "lowercase": False}

    def naive_forward(self, ref: ModelRef):
        open_clip = require_open_clip()
        arch, tag = split_source(_model_name(ref))
        model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=tag)
        model.eval()

        def forward(images):
            import torch

            return model.encode_image(torch.stack([transform(im) for im in images]))

        return forward, int(model.encode_image(transform(_blank()).unsqueeze(0)).shape[-1])


def _blocks(tower) -> list:
    """A transformer tower's residual blocks in order; [] when it has none visdex knows (HF text towers)."""
    inner = getattr(tower, "transformer", None)
    return list(getattr(inner, "resblocks", None) or [])


def _image_tower(visual) -> tuple[list, list, list]:
    """(whole, blocks, top) of an OpenCLIP image tower: its own ViT, or a timm trunk (MobileCLIP's FastViT) whose
    children after ``stages`` / ``blocks`` (final conv, norm, head) and the projection head are the top."""
    trunk = getattr(visual, "trunk", None)
    if trunk is None:
        top = [getattr(visual, n, None) for n in ("attn_pool", "ln_post", "proj")]
        return _clean(([visual], _blocks(visual), top))
    children = list(trunk.named_children())
    at = next((i for i, (n, _) in enumerate(children) if n in ("stages", "blocks", "layers")), None)
    blocks = list(children[at][1]) if at is not None else []
    top = [m for _, m in children[at + 1 :]] if at is not None else []
    return _clean(([visual], blocks, top + [getattr(visual, "head", None)]))


def _clean(tower: tuple[list, list, list]) -> tuple[list, list, list]:
    """Drop the parts a model lacks (None) and modules without parameters."""
    import torch

    def keep(x) -> bool:
        return isinstance(x, torch.nn.Parameter) or (x is not None and any(True for _ in x.parameters()))

    whole, blocks, top = tower
    return [x for x in whole if keep(x)], blocks, [x for x in top if keep(x)]


def save_folder(emb, model, folder: Path) -> None:
    """``model`` as an OpenCLIP folder (``open_clip_config.json`` + ``open_clip_model.safetensors``, the layout of
    OpenCLIP's hub repos), which loads back as ``open_clip:local-dir:<folder>`` or the bare folder."""
    from safetensors.torch import save_file

    cfg = {"model_cfg": _model_cfg(emb.source), "preprocess_cfg": dict(model.visual.preprocess_cfg)}
    (folder / _CONFIG).write_text(json.dumps(cfg, indent=2))
    # clone: safetensors refuses tensors that share memory
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / _WEIGHTS[0]))


def _model_cfg(model_name: str) -> dict:
    """The architecture config ``model_name`` was built from (a named architecture, a hub repo, a folder)."""
    open_clip = require_open_clip()
    if model_name.startswith(_SCHEMES):
        if model_name.startswith("local-dir:"):
            path = Path(model_name[len("local-dir:") :]) / _CONFIG
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model_name[len("hf-hub:") :], _CONFIG))
        return json.loads(path.read_text())["model_cfg"]
    cfg = open_clip.get_model_config(split_source(model_name)[0])
    if cfg is None:
        raise ModelLoadError(f"OpenCLIP has no config for {model_name!r}")
    return cfg


def clip_bpe_tokenizer(model_max_length: int = 77):
    """The CLIP BPE tokenizer as a transformers fast tokenizer, built offline from the vocabulary OpenCLIP ships
    in its wheel, with the normaliser and splitting rules of transformers' CLIP converter (the tokenizer
    ``openai/clip-vit-base-patch32`` has)."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    with gzip.open(default_bpe()) as f:
        lines = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 1]
    merges = [(a, b) for a, b in (m.split() for m in lines)]  # each line: "left right"
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    ids = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(BPE(vocab=ids, merges=merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                        fuse_unk=False, unk_token="<|endoftext|>"))  # fmt: skip
    # OpenCLIP html-unescapes its input: the common entities, so "&amp;" tokenises the same both ways
    entities = [normalizers.Replace(k, v) for k, v in (("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"),
                                                       ("&quot;", '"'), ("&#39;", "'"), ("&nbsp;", " "))]  # fmt: skip
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), *entities, normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(),
         normalizers.Lowercase()]
    )  # fmt: skip
    split = Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(split, behavior="removed", invert=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", ids["<|startoftext|>"]), ("<|endoftext|>", ids["<|endoftext|>"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>", model_max_length=model_max_length,
    )  # fmt: skip


def _blank():
    from PIL import Image

    return Image.new("RGB", (64, 64))


FAMILY = OpenClipFamily()
