"""The architecture advisor: constraints in, a blueprint out (model, training, vector store).

Everything that decides is data in this module, and every decision carries its "why":

* ``MODEL_PROFILES``: per model its architecture, dimension, what it embeds, a rough quality index
  for text and for visual queries, and speed (query latency, indexing throughput) on CPU and GPU;
* ``RUNTIMES``: how a model can run on each kind of hardware, and what that does to latency;
* :mod:`visdex.sizing`: memory and search latency of each vector encoding and ANN index;
* ``TRAINING_RULES`` and ``DOMAIN_NOTES``: first matching rule wins; notes say where general
  models are weak.

Speeds come from ``benchmarks/results/*.json`` when such files are present (see
:func:`visdex.sizing.load_benchmarks`); otherwise from the defaults here, reported as estimates.

>>> rec = recommend(Constraints(query="visual", catalog_size=50_000_000, memory_gb=2, hardware="cpu"))
>>> rec.model.name, rec.store.codec
('dinov2-small', '128-d PQ16')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum

from .sizing import MILVUS_MIN, Benchmarks, StorePlan, load_benchmarks, plan_store

__all__ = [
    "DOMAINS",
    "MODEL_PROFILES",
    "Constraints",
    "Domain",
    "Hardware",
    "LabelKind",
    "QueryKind",
    "ModelChoice",
    "ModelProfile",
    "Recommendation",
    "TrainingPlan",
    "recommend",
]


class QueryKind(str, Enum):
    """What users search with."""

    text = "text"
    visual = "visual"
    both = "both"


class Hardware(str, Enum):
    """Where the model runs."""

    cpu = "cpu"
    gpu = "gpu"


class LabelKind(str, Enum):
    """Labelled data the user has: none, (image, text) pairs, or images in classes."""

    none = "none"
    pairs = "pairs"
    classes = "classes"


class Domain(str, Enum):
    """What the images are."""

    photos = "photos"
    products = "products"
    faces = "faces"
    documents = "documents"
    art = "art"
    medical = "medical"
    satellite = "satellite"
    other = "other"


QUERY_TYPES = tuple(k.value for k in QueryKind)
HARDWARE = tuple(k.value for k in Hardware)
LABEL_KINDS = tuple(k.value for k in LabelKind)
DOMAINS = tuple(k.value for k in Domain)


# -- constraints ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Constraints:
    """What the user has and needs. ``labelled`` counts pairs or labelled images; ``classes`` how many
    classes those images fall in; ``memory_gb`` is the RAM for the vector index (None: no limit).

    >>> Constraints(query="text", multilingual=True).query
    'text'
    """

    query: str = "both"
    catalog_size: int = 100_000
    latency_ms: float = 100.0
    hardware: str = "cpu"
    domain: str = "photos"
    labels: str = "none"
    labelled: int = 0
    classes: int = 0
    memory_gb: float | None = None
    multilingual: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (("query", QUERY_TYPES), ("hardware", HARDWARE), ("labels", LABEL_KINDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.domain not in DOMAINS:
            raise ValueError(f"domain must be one of {', '.join(DOMAINS)}; got {self.domain!r}")
        if self.catalog_size < 1 or self.latency_ms <= 0 or self.labelled < 0 or self.classes < 0:
            raise ValueError("catalog size and latency must be positive, counts non-negative")
        if self.memory_gb is not None and self.memory_gb <= 0:
            raise ValueError("the memory budget must be positive")

    @property
    def memory_bytes(self) -> float | None:
        return None if self.memory_gb is None else self.memory_gb * 1024**3


# -- models -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelProfile:
    """What the advisor knows about a model. Quality indexes are rough relative ranks (0..1), not
    benchmark scores you can quote: ``quality_text`` follows published zero-shot COCO text-to-image
    Recall@1; ``quality_visual`` the kNN and instance-retrieval tables of the DINOv2 paper. Times are
    one query at batch 1; ``img_per_s`` is batched indexing throughput."""

    name: str
    arch: str
    params_m: float
    dim: int
    text: bool
    multilingual: bool
    quality_text: float
    quality_visual: float
    image_ms: dict[str, float]
    text_ms: dict[str, float]
    img_per_s: dict[str, float]

    family: str = ""

    @property
    def is_cnn(self) -> bool:
        return "CNN" in self.arch


def _profiles() -> tuple[ModelProfile, ...]:
    """One profile per catalog row that carries one: the catalog is the one table of models."""
    from .models.catalog import CATALOG

    return tuple(
        ModelProfile(spec.name, p.arch, p.params_m, spec.dim, spec.supports_text, p.multilingual, p.quality_text,
                     p.quality_visual, dict(p.image_ms), dict(p.text_ms), dict(p.img_per_s), spec.family)
        for spec in CATALOG
        if (p := spec.profile) is not None
    )  # fmt: skip


MODEL_PROFILES: tuple[ModelProfile, ...] = _profiles()
_PROFILE = {p.name: p for p in MODEL_PROFILES}

# Per hardware, the runtimes tried in order, with their latency factor (ONNX int8: >= 2x torch fp32).
RUNTIMES: dict[str, tuple[tuple[str, float], ...]] = {
    "cpu": (("torch fp32", 1.0), ("ONNX Runtime int8", 0.5)),
    "gpu": (("torch fp16 (CUDA)", 1.0),),
}


# -- choosing the model ----------------------------------------------------------------------------------
@dataclass
class ModelChoice:
    """The model, how it runs, its query latency and indexing speed, and why it won."""

    name: str
    arch: str
    params_m: float
    dim: int
    runtime: str
    query_ms: float
    img_per_s: float
    why: list[str] = field(default_factory=list)
    alternatives: list[dict] = field(default_factory=list)


@dataclass
class _Option:
    profile: ModelProfile
    runtime: str
    embed_ms: float
    store: StorePlan

    @property
    def total_ms(self) -> float:
        return self.embed_ms + self.store.search_ms


def _candidates(c: Constraints) -> tuple[list[ModelProfile], list[str]]:
    """Step 1, the family: what kind of model can answer these queries at all."""
    if c.query == "visual":
        pool = sorted((p for p in MODEL_PROFILES if not p.text), key=lambda p: -p.quality_visual)
        why = ["visual queries only: DINOv2's self-supervised ViT features keep instance detail (shape, texture, "
               "pattern) that caption-trained CLIP/SigLIP compress into what a caption would say, so DINOv2 wins "
               "image-to-image retrieval",
               "a CNN (EfficientNet-Lite0) is the fallback when no ViT meets the latency: convolutions are cheap at "
               "batch 1 on CPU, but ImageNet-classifier features are weaker for retrieval"]  # fmt: skip
        return pool, why
    pool = sorted((p for p in MODEL_PROFILES if p.text), key=lambda p: (-p.quality_text, -p.quality_visual))
    both = "one model for text and image queries: " if c.query == "both" else ""
    why = [f"{both}text queries need a model that puts text and images in one space: CLIP or SigLIP (OpenAI's or "
           "OpenCLIP's open-data and MobileCLIP weights), trained contrastively on image-caption pairs (DINOv2 has no "
           "text tower)"]  # fmt: skip
    if c.multilingual:
        pool = [p for p in pool if p.multilingual]
        why.append("multilingual queries: CLIP learned from English captions only; SigLIP 2 was trained on "
                   "multilingual WebLI with a multilingual tokenizer")  # fmt: skip
    else:
        why.append("SigLIP 2 retrieves clearly better zero-shot than CLIP of the same size (sigmoid loss, more and "
                   "cleaner data); CLIP B/32 is the cheapest (49 patches per image instead of 196)")  # fmt: skip
    return pool, why


def _query_ms(p: ModelProfile, c: Constraints, bench: Benchmarks) -> tuple[float, str]:
    """One query's embedding time: the text tower for text queries, the image tower for visual ones."""
    towers = {"text": ("text",), "visual": ("image",), "both": ("image", "text")}[c.query]
    best = (0.0, "estimate")
    for tower in towers:
        measured = bench.model_ms.get((p.name, c.hardware, tower))
        default = (p.text_ms if tower == "text" else p.image_ms).get(c.hardware, 0.0)
        value = measured or (default, "estimate")
        best = max(best, value, key=lambda v: v[0])
    return best


def _options(c: Constraints, pool: list[ModelProfile], bench: Benchmarks) -> list[_Option]:
    out = []
    for p in pool:
        ms, _ = _query_ms(p, c, bench)
        for runtime, factor in RUNTIMES[c.hardware]:
            embed = ms * factor
            store = plan_store(c.catalog_size, p.dim, c.memory_bytes, max(c.latency_ms - embed, 0.0), bench.ann)
            out.append(_Option(p, runtime, embed, store))
    return out


def _pick(c: Constraints, options: list[_Option]) -> tuple[_Option, str]:
    """Step 2, the size: the best model meeting the latency with full-dimension vectors that fit memory;
    if memory forces a reduction, the smallest-dimension model; if nothing is fast enough, the fastest."""
    fast = [o for o in options if o.total_ms <= c.latency_ms]
    whole = [o for o in fast if o.store.dim == o.profile.dim and o.store.fits_memory]
    if whole:
        o = whole[0]
        return o, (f"{o.profile.name}: the best quality among the models that meet {c.latency_ms:g} ms on "
                   f"{c.hardware.upper()} (query embedding {o.embed_ms:.0f} ms with {o.runtime} + search "
                   f"{o.store.search_ms:.1f} ms)")  # fmt: skip
    if fast:
        fitting = [o for o in fast if o.store.fits_memory] or fast
        o = min(fitting, key=lambda o: (o.profile.dim, fitting.index(o)))
        return o, (f"{o.profile.name} ({o.profile.dim}-d): no model's full-dimension vectors fit the memory budget, "
                   f"so the vectors are reduced to {o.store.dim}-d anyway; the model with the fewest dimensions loses "
                   "least in that reduction and is the cheapest to run")  # fmt: skip
    o = min(options, key=lambda o: o.total_ms)
    return o, (
        f"no model meets {c.latency_ms:g} ms on {c.hardware.upper()}: the fastest is {o.profile.name} with "
        f"{o.runtime} at ~{o.total_ms:.0f} ms; use a GPU, cache frequent query embeddings, or allow more time"
    )


def _choose_model(c: Constraints, bench: Benchmarks) -> tuple[ModelChoice, StorePlan]:
    pool, why = _candidates(c)
    options = _options(c, pool, bench)
    chosen, reason = _pick(c, options)
    p = chosen.profile
    why.append(reason)
    if chosen.runtime.startswith("ONNX"):
        tower = "text" if c.query == "text" else "image"
        why.append(
            f"torch fp32 would need ~{chosen.embed_ms * 2:.0f} ms per query: export the {tower} tower to ONNX "
            "Runtime with int8 dynamic quantisation (~2x faster on CPU, cosine >= 0.99 to fp32)"
        )
    note = _licence_note(c, options, chosen)
    if note:
        why.append(note)
    if p.is_cnn:
        why.append("a CNN here: nothing transformer-sized fits the budget; expect weaker retrieval than DINOv2")
    rate = _img_per_s(p, c, bench)
    choice = ModelChoice(p.name, p.arch, p.params_m, p.dim, chosen.runtime, round(chosen.embed_ms, 2), rate, why,
                         _alternatives(c, options, p.name))  # fmt: skip
    return choice, chosen.store


def _licence_note(c: Constraints, options: list[_Option], chosen: _Option) -> str | None:
    """Research-only weights win on numbers but may not be usable in a product: say so, and name the best
    model with an open licence that meets the same budget."""
    from .models import get_spec

    licence = get_spec(chosen.profile.name).license
    if "research" not in licence.lower():
        return None
    fits = [o for o in options if o.total_ms <= max(c.latency_ms, chosen.total_ms)]
    open_ = next((o for o in fits if "research" not in get_spec(o.profile.name).license.lower()), None)
    note = f"{chosen.profile.name}'s weights are under a research licence ({licence}): check it allows your use"
    if open_ is None:
        return note
    name = open_.profile.name
    return (f"{note}; for a commercial product take {name} ({get_spec(name).license}, ~{open_.total_ms:.0f} ms), "
            "the best openly licensed model in this budget")  # fmt: skip


def _alternatives(c: Constraints, options: list[_Option], chosen: str) -> list[dict]:
    """Each other candidate at its best runtime, with what ruled it out."""
    out = []
    for name in dict.fromkeys(o.profile.name for o in options if o.profile.name != chosen):
        mine = [o for o in options if o.profile.name == name]
        o = next((o for o in mine if o.total_ms <= c.latency_ms), min(mine, key=lambda o: o.total_ms))
        problem = ("over the latency budget" if o.total_ms > c.latency_ms else
                   f"vectors must be reduced to {o.store.dim}-d to fit memory" if o.store.dim != o.profile.dim else
                   "lower quality for this query type")  # fmt: skip
        out.append({"model": name, "runtime": o.runtime, "total_ms": round(o.total_ms, 1), "reason": problem})
    return out


def _img_per_s(p: ModelProfile, c: Constraints, bench: Benchmarks | None = None) -> float:
    measured = bench.img_per_s.get((p.name, c.hardware)) if bench else None
    return measured[0] if measured else p.img_per_s[c.hardware]


# -- training ------------------------------------------------------------------------------------------------
@dataclass
class TrainingPlan:
    """How to adapt the model to the user's data (or not), with which loss, training what, and why."""

    strategy: str
    loss: str | None
    scope: str
    why: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TrainingRule:
    """``when`` the constraints match, recommend ``strategy`` with ``loss`` (a string, or a function of
    the chosen model's family) because ``why``. The first matching rule of ``TRAINING_RULES`` wins."""

    when: Callable[[Constraints], bool]
    strategy: str
    loss: str | Callable[[str], str] | None
    why: str


def _per_class(c: Constraints) -> float:
    return c.labelled / c.classes if c.classes else 0.0


def _contrastive_loss(family: str) -> str:
    """The loss the family's adapter names for caption fine-tuning."""
    from .models.families import family as family_adapter

    return family_adapter(family).profile.contrastive_loss or "InfoNCE (CLIP's symmetric cross-entropy)"


TRAINING_RULES: tuple[TrainingRule, ...] = (
    TrainingRule(lambda c: c.labels == "none", "zero-shot", None,
                 "no labelled data: use the pretrained model as it is. Label 100-500 images (a folder per class) "
                 "and compare models with `visdex eval labelled` before committing to one"),
    TrainingRule(lambda c: c.labels == "pairs" and c.query != "visual", "contrastive image-text fine-tune",
                 _contrastive_loss,
                 "(image, text) pairs teach the model your vocabulary (product titles, in-house names): a "
                 "contrastive loss pulls each image towards its own text and away from the other texts in the batch"),
    TrainingRule(lambda c: c.labels == "pairs", "contrastive fine-tune on image pairs",
                 "InfoNCE (NT-Xent) over in-batch negatives",
                 "for image-only search the pairs should be two images of the same thing (a shopper's photo and "
                 "the catalog shot): every other image in the batch serves as a negative. Image-caption pairs "
                 "would mostly help text queries"),
    TrainingRule(lambda c: c.labels == "classes" and c.query != "visual",
                 "contrastive image-text fine-tune on label captions", _contrastive_loss,
                 "text queries must stay aligned with the images, and metric learning on the image side alone "
                 "would break that: turn each class into captions ('a photo of a {label}') and train contrastively"),
    TrainingRule(lambda c: c.labels == "classes" and 0 < c.labelled < 1000, "metric learning",
                 "triplet loss with hard-negative mining",
                 "few labelled images: triplets with batch-hard (or semi-hard) negatives are the most stable loss at "
                 "small batch sizes, and a head on frozen features cannot overfit a few hundred images"),
    TrainingRule(lambda c: c.labels == "classes" and _per_class(c) >= 15 and c.classes >= 50, "metric learning",
                 "ArcFace (additive angular margin)",
                 "many classes with enough images each: ArcFace learns one proxy per class, needs no pair mining, "
                 "scales to thousands of classes and gives tight, well-separated clusters (the standard for "
                 "identities and SKUs)"),
    TrainingRule(lambda c: c.labels == "classes", "metric learning", "multi-similarity loss (with its pair miner)",
                 "few images per class, or counts unknown: the multi-similarity loss weighs the informative positive "
                 "and negative pairs of each batch and works with 2-5 images per class; it is among the strongest "
                 "losses under the fair comparison of Musgrave et al. 2020"),
)  # fmt: skip


def _scope(c: Constraints) -> str:
    n = c.labelled
    if c.labels == "none":
        return "nothing to train"
    if n == 0:
        return "count unknown: start with a projection head or a rank-8 LoRA; widen while held-out scores improve"
    if n < 1000:
        return f"{n:,} examples: freeze the backbone, train a projection head (or a rank-8 LoRA adapter)"
    if n < 20000:
        return f"{n:,} examples: a rank-16 LoRA adapter or the last 2 blocks + head"
    return f"{n:,} examples: the last 4 blocks + head (a full fine-tune on a GPU past ~10^6 examples)"


def _training(c: Constraints, model: ModelChoice, store: StorePlan) -> TrainingPlan:
    rule = next(r for r in TRAINING_RULES if r.when(c))
    family = _PROFILE[model.name].family
    loss = rule.loss(family) if callable(rule.loss) else rule.loss
    why = [rule.why]
    if c.labels != "none":
        why.append("hold out 10-20% (whole classes for metric learning) and run `visdex eval` on it before and after: "
                   "keep the fine-tuned model only if the held-out numbers go up")  # fmt: skip
        if store.dim < model.dim:
            why.append(
                f"train a {store.dim}-d output head instead of reducing by PCA afterwards: the head learns "
                f"which {store.dim} directions matter for your data (the memory budget needs {store.dim}-d)"
            )
        if c.hardware == "cpu" and c.labelled > 20000:
            why.append("more than ~20k examples on CPU takes days: train on a GPU, index on CPU")
    return TrainingPlan(rule.strategy, loss, _scope(c), why)


# -- domains ---------------------------------------------------------------------------------------------------
DOMAIN_NOTES: dict[str, str] = {
    "photos": "everyday photos are what these models were trained on: zero-shot works well.",
    "products": "product search: SigLIP 2 handles product-title queries well; for 'same product' matching use "
                "DINOv2 + metric learning on SKU labels (ArcFace); crop to the product when backgrounds vary.",
    "faces": "general models do not recognise people: CLIP, SigLIP and DINOv2 match pose, light, hair and "
             "background, not identity. 'Same person' search needs face detection + alignment + a face-recognition "
             "embedding (ArcFace-trained, e.g. InsightFace), which visdex does not ship. Face embeddings are "
             "biometric data: check consent and the law (GDPR art. 9, BIPA) first.",
    "documents": "general image models judge a page by its layout, not its words: CLIP reads only large text. "
                 "To find documents by content, OCR them and use a text search engine (or a document-retrieval "
                 "model such as ColPali); visdex is right for 'forms/layouts like this one'.",
    "art": "CLIP and SigLIP know artists, styles and subjects from web captions; DINOv2 is better at finding "
           "copies, crops and near-duplicates of a work.",
    "medical": "medical images (X-ray, CT, histology, fundus) are far from web photos: general models separate "
               "them coarsely at best. Fine-tune on labelled data or start from a domain model (e.g. BiomedCLIP), "
               "validate on a held-out set with `visdex eval`, and do not use retrieval scores for diagnosis.",
    "satellite": "overhead imagery differs from web photos (no 'up', fixed scales, extra bands): expect weak "
                 "zero-shot results; fine-tune on labelled tiles or use a remote-sensing model (e.g. RemoteCLIP).",
    "other": "an unusual domain: measure before choosing — label a few hundred images and compare models with "
             "`visdex eval`.",
}  # fmt: skip
_WEAK_DOMAINS = ("faces", "documents", "medical", "satellite")


# -- the blueprint ------------------------------------------------------------------------------------------
@dataclass
class Recommendation:
    """The whole blueprint: model, training, vector store, the latency and memory it adds up to, notes."""

    constraints: Constraints
    model: ModelChoice
    training: TrainingPlan
    store: StorePlan
    latency: dict
    index_hours: float
    notes: list[str]
    sources: list[str]
    commands: list[str]

    def to_dict(self) -> dict:
        store = asdict(self.store)
        store.update(memory=self.store.memory, memory_bytes=int(self.store.memory_bytes),
                     search_ms=round(self.store.search_ms, 3))  # fmt: skip
        return {"constraints": asdict(self.constraints), "model": asdict(self.model),
                "training": asdict(self.training), "store": store, "latency": self.latency,
                "index_hours": round(self.index_hours, 2), "notes": self.notes, "sources": self.sources,
                "commands": self.commands}  # fmt: skip


def _notes(c: Constraints, model: ModelChoice, store: StorePlan, hours: float) -> list[str]:
    notes = [("weak spot: " if c.domain in _WEAK_DOMAINS else "") + DOMAIN_NOTES[c.domain]]
    if hours > 48:
        gpu_hours = c.catalog_size / _PROFILE[model.name].img_per_s["gpu"] / 3600
        where = "on this hardware" if c.hardware == "gpu" else f"on CPU; one GPU would take ~{gpu_hours:.1f} h"
        notes.append(f"embedding {c.catalog_size:,} images takes ~{hours / 24:.1f} days {where}")
    if not store.fits_memory:
        notes.append(f"the index needs {store.memory} even compressed: more than the memory budget on one machine")
    if c.catalog_size > MILVUS_MIN and c.hardware == "cpu":
        notes.append("at this scale, embed on GPUs in parallel workers and bulk-insert into Milvus")
    return notes


def _ann_flag(store: StorePlan, n: int) -> str:
    """The ``visdex index`` option that builds the planned index (empty when ``--ann auto`` does already)."""
    from .store.local import AUTO_HNSW_FROM

    if store.backend == "milvus":
        from .store.milvus import ann_for_plan

        return f" --store milvus://MILVUS_HOST:19530 --ann {ann_for_plan(store)}"
    if store.index == "ivfpq":
        return " --ann ivfpq"
    codec = "-fp16" if "fp16" in store.codec else "-sq8" if "int8" in store.codec else ""  # e.g. "128-d int8"
    auto = "hnsw" if n >= AUTO_HNSW_FROM else "flat"
    kind = store.index + codec
    return "" if kind == auto else f" --ann {kind}"


def _commands(c: Constraints, model: ModelChoice, store: StorePlan) -> list[str]:
    cmds = []
    if c.labels == "classes" or c.query == "visual":
        cmds.append(f"visdex eval labelled LABELLED_DIR --model {model.name} --model "
                    f"{'dinov2-small' if model.name != 'dinov2-small' else 'dinov2-base'}")  # fmt: skip
    if c.query != "visual":
        other = "clip-vit-b-32" if model.name != "clip-vit-b-32" else "siglip2-base"
        cmds.append(f"visdex eval captions CAPTIONS.csv --model {model.name} --model {other}")
    runs_as = f"onnx-int8:{model.name}" if model.runtime.startswith("ONNX") else model.name
    ann = _ann_flag(store, c.catalog_size)
    if store.dim < model.dim:  # the plan reduces the dimension: make that model first
        reduced = f"runs/{model.name}-{store.dim}"
        if c.labels == "classes":
            cmds.append(f"visdex finetune labelled LABELLED_DIR --model {model.name} -o {reduced} --dim {store.dim}")
        else:
            cmds.append(f"visdex finetune pca PHOTOS_DIR --model {model.name} -o {reduced} --dim {store.dim}")
        runs_as = reduced
    cmds.append(f"visdex index PHOTOS_DIR --model {runs_as}{ann}")
    return cmds


def recommend(constraints: Constraints, benchmarks_dir: str | None = None) -> Recommendation:
    """Turn constraints into a blueprint: model, training strategy, vector store, with reasons and estimates.

    >>> rec = recommend(Constraints(query="text", multilingual=True))
    >>> rec.model.name, rec.training.strategy
    ('siglip2-base', 'zero-shot')
    """
    c = constraints
    bench = load_benchmarks(benchmarks_dir)
    model, store = _choose_model(c, bench)
    training = _training(c, model, store)
    hours = c.catalog_size / max(model.img_per_s, 1e-9) / 3600
    total = model.query_ms + store.search_ms
    latency = {"query_embed_ms": round(model.query_ms, 2), "search_ms": round(store.search_ms, 3),
               "total_ms": round(total, 2), "budget_ms": c.latency_ms, "fits": total <= c.latency_ms}  # fmt: skip
    sources = bench.sources() or ["estimates built into visdex (no benchmarks/results/*.json found)"]
    return Recommendation(c, model, training, store, latency, hours, _notes(c, model, store, hours), sources,
                          _commands(c, model, store))  # fmt: skip
