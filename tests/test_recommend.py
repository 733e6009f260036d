"""The architecture advisor: recommendations follow from the constraints, memory and latency add up,
benchmark files override the built-in speeds, and the command works with flags, JSON and prompts."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from visdex.commands.recommend import prompt_constraints
from visdex.models import get_spec
from visdex.recommend import MODEL_PROFILES, Constraints, recommend
from visdex.sizing import (
    HNSW_M,
    _search_ms,
    codec_ladder,
    format_bytes,
    load_benchmarks,
    parse_bytes,
    parse_count,
    plan_store,
)

from clihelp import run_cli

TEXT_MODELS = {"clip-vit-b-32", "clip-vit-b-16", "clip-vit-l-14", "siglip2-base", "openclip-vit-b-32",
               "openclip-vit-l-14", "mobileclip2-s0"}  # fmt: skip


def rec(**kw):
    return recommend(Constraints(**kw), benchmarks_dir="/nonexistent")  # built-in numbers only


# -- models ------------------------------------------------------------------------------------------
def test_every_profile_is_a_catalog_model_with_its_dimension():
    for p in MODEL_PROFILES:
        spec = get_spec(p.name)
        assert spec.dim == p.dim and spec.supports_text == p.text


def test_visual_only_with_little_memory_gets_dinov2_small_compressed_to_128d():
    r = rec(query="visual", catalog_size=50_000_000, memory_gb=2)
    assert r.model.name == "dinov2-small"
    assert r.store.dim == 128 and ("PQ" in r.store.codec or "int8" in r.store.codec)
    assert r.store.fits_memory and r.store.memory_bytes <= 2 * 1024**3
    assert any("fewest dimensions" in w for w in r.model.why)
    assert "reduce" in r.store.params


def test_visual_only_with_room_gets_the_stronger_dinov2():
    r = rec(query="visual", catalog_size=100_000, hardware="gpu", latency_ms=200)
    assert r.model.name == "dinov2-base" and r.store.codec == "fp32" and r.store.dim == 768
    assert any("DINOv2" in w for w in r.model.why)


@pytest.mark.parametrize("query", ["text", "both"])
def test_text_queries_get_clip_or_siglip(query):
    for hw in ("cpu", "gpu"):
        r = rec(query=query, hardware=hw)
        assert r.model.name in TEXT_MODELS
        assert any("CLIP or SigLIP" in w for w in r.model.why)


def test_multilingual_text_gets_siglip2():
    r = rec(query="text", multilingual=True, hardware="cpu", latency_ms=1000)
    assert r.model.name == "siglip2-base"
    assert any("multilingual" in w for w in r.model.why)
    assert rec(query="both", multilingual=True, hardware="gpu").model.name == "siglip2-base"


def test_beyond_1e8_vectors_goes_to_milvus():
    r = rec(query="text", catalog_size=2 * 10**8, hardware="gpu")
    assert r.store.backend == "milvus" and r.store.params["query_nodes"] >= 1
    assert any("Milvus" in w for w in r.store.why)
    assert rec(query="text", catalog_size=10**7).store.backend == "embedded"


def test_cpu_and_a_tight_latency_budget_shrink_the_model_or_quantise_it():
    loose = rec(query="visual", hardware="cpu", latency_ms=1000)
    tight = rec(query="visual", hardware="cpu", latency_ms=20)
    assert loose.model.name == "dinov2-base" and loose.model.runtime == "torch fp32"
    assert tight.model.params_m < loose.model.params_m or "int8" in tight.model.runtime
    assert tight.latency["fits"] and tight.latency["total_ms"] <= 20
    assert any(
        a["model"] == "dinov2-base" and a["reason"] == "over the latency budget" for a in tight.model.alternatives
    )
    # between dinov2-small's int8 and fp32 query times: only the quantised tower fits
    small = next(p for p in MODEL_PROFILES if p.name == "dinov2-small")
    onnx = rec(query="visual", hardware="cpu", latency_ms=small.image_ms["cpu"] * 0.75)
    assert onnx.model.name == "dinov2-small"
    assert "ONNX" in onnx.model.runtime and any("ONNX" in w for w in onnx.model.why)


def test_an_impossible_budget_says_so():
    r = rec(query="visual", hardware="cpu", latency_ms=1)
    assert not r.latency["fits"]
    assert any("no model meets" in w for w in r.model.why)


# -- training ------------------------------------------------------------------------------------------
def test_pairs_mean_a_contrastive_fine_tune_with_the_family_loss():
    siglip = rec(query="text", labels="pairs", labelled=20_000, hardware="gpu")
    assert siglip.model.name == "siglip2-base"
    assert siglip.training.strategy == "contrastive image-text fine-tune" and "sigmoid" in siglip.training.loss
    # CPU, image and text queries in 45 ms: MobileCLIP2-S0 is built for this (11 M-param image tower, faster than
    # ViT-B/32, better zero-shot); `finetune captions` trains OpenCLIP models with InfoNCE (tests/test_train.py).
    # Its weights are research-only, so the advice names the best openly licensed model in the same budget.
    mobile = rec(query="both", labels="pairs", labelled=500, hardware="cpu", latency_ms=45)
    assert mobile.model.name == "mobileclip2-s0"
    assert "InfoNCE" in mobile.training.loss and "projection head" in mobile.training.scope
    assert any("research licence" in w and "openclip-vit-b-32 (MIT" in w for w in mobile.model.why)
    assert not any("licence" in w for w in siglip.model.why)  # Apache-2.0: nothing to warn about


@pytest.mark.parametrize(("labelled", "classes", "loss"), [
    (500, 10, "triplet"),  # few images
    (50_000, 500, "ArcFace"),  # many classes with 100 images each
    (5_000, 2_000, "multi-similarity"),  # 2.5 images per class
])  # fmt: skip
def test_class_labels_mean_metric_learning_with_a_loss_that_fits_the_data(labelled, classes, loss):
    r = rec(query="visual", labels="classes", labelled=labelled, classes=classes)
    assert r.training.strategy == "metric learning"
    assert loss in r.training.loss
    assert len(r.training.why) >= 2  # the loss's reason + the held-out evaluation advice


def test_class_labels_with_text_queries_keep_the_towers_aligned():
    r = rec(query="both", labels="classes", labelled=5000, classes=50)
    assert r.training.strategy == "contrastive image-text fine-tune on label captions"
    assert r.model.name in TEXT_MODELS


def test_memory_bound_training_trains_a_128d_head():
    r = rec(query="visual", catalog_size=50_000_000, memory_gb=2, labels="classes", labelled=5000, classes=100)
    assert any("128-d output head" in w for w in r.training.why)


def test_no_labels_means_zero_shot():
    r = rec()
    assert r.training.strategy == "zero-shot" and r.training.loss is None


# -- domains ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("domain", "words"), [("faces", "not identity"), ("documents", "OCR"),
                                               ("medical", "BiomedCLIP")])  # fmt: skip
def test_weak_domains_get_an_honest_note(domain, words):
    r = rec(query="visual", domain=domain)
    assert r.notes[0].startswith("weak spot") and words in r.notes[0]
    assert not rec(domain="photos").notes[0].startswith("weak spot")


# -- memory and latency -----------------------------------------------------------------------------
def test_memory_is_computed_from_n_dim_and_bytes():
    n, d = 50_000, 512
    flat = plan_store(n, d)
    assert flat.index == "flat" and flat.codec == "fp32" and flat.memory_bytes == n * (4 * d + 8)
    hnsw = plan_store(1_000_000, d)
    assert hnsw.index == "hnsw" and hnsw.memory_bytes == pytest.approx(1e6 * (4 * d + 8 + 2 * HNSW_M * 4 * 1.05))
    fp16 = plan_store(1_000_000, d, memory_bytes=hnsw.memory_bytes - 1)
    assert fp16.codec == "fp16" and fp16.memory_bytes < hnsw.memory_bytes
    tight = plan_store(1_000_000, d, memory_bytes=100 * 1024**2)
    assert tight.index == "ivfpq" and tight.memory_bytes <= 100 * 1024**2
    hopeless = plan_store(10**9, d, memory_bytes=1024**2)
    assert not hopeless.fits_memory and hopeless.backend == "milvus"


def test_codecs_ordered_by_loss_and_bytes_fall():
    ladder = codec_ladder(384)
    assert [c.name for c in ladder[:3]] == ["fp32", "fp16", "int8"]
    assert [c.loss for c in ladder] == sorted(c.loss for c in ladder)
    assert ladder[0].bytes == 4 * 384 and ladder[-1].bytes < 64


def test_latency_grows_with_the_catalog():
    small, big = plan_store(10_000, 512), plan_store(10**7, 512)
    assert small.search_ms < 5 and big.index == "hnsw" and big.search_ms < 10
    assert plan_store(10**7, 512, memory_bytes=512 * 1024**2).search_ms > 0


def test_benchmark_files_replace_the_estimates(tmp_path):
    result = {"hardware": "cpu", "models": [
        {"model": "dinov2-base", "tower": "image", "batch1_ms": 1500.0, "images_per_second": 1.5},
        {"model": "clip-vit-b-32", "images_per_second": 9999},  # no tower: an ingest rate, ignored
    ], "ann": [{"index": "hnsw", "codec": "fp32", "n": 100_000, "dim": 512, "p50_ms": 9.0}]}  # fmt: skip
    (tmp_path / "speeds.json").write_text(json.dumps(result))
    (tmp_path / "broken.json").write_text("{not json")
    bench = load_benchmarks(tmp_path)
    assert bench.model_ms[("dinov2-base", "cpu", "image")][0] == 1500.0
    assert ("clip-vit-b-32", "cpu") not in bench.img_per_s
    assert bench.ann["hnsw"] == pytest.approx(9.0)
    r = recommend(Constraints(query="visual", latency_ms=500, catalog_size=10**6), benchmarks_dir=str(tmp_path))
    assert r.model.name == "dinov2-small"  # dinov2-base measured too slow for 500 ms
    assert any(str(tmp_path / "speeds.json") == s for s in r.sources)
    assert r.store.search_ms == pytest.approx(9.0 * 0.75 * 20 / 16.61, rel=0.01)  # 384-d, log2(1e6)/log2(1e5)
    default = rec(query="visual", latency_ms=500, catalog_size=10**6)
    assert "estimate" in default.sources[0] and "estimate" in default.store.source


def test_ann_benchmark_results_rebase_the_search_estimates(tmp_path):
    """benchmarks/ann.py's own JSON: each visdex index's latency at recall@10 0.95 is used, baselines are not."""

    def cfg(name, kind, ms, **extra):
        return {"config": name, "kind": kind, "n": 1_000_000, "dim": 512, "at_recall": {"0.95": {
            "ms_per_query_1thread": ms}}, **extra}  # fmt: skip

    configs = [cfg("visdex-auto", "hnsw", 0.5), cfg("visdex-ivfpq", "ivfpq", 1.0, params={"m": 64}),
               cfg("hnswlib-default", None, 0.01), cfg("visdex-hnsw-fp16", "hnsw-fp16", 9.0),
               {"config": "visdex-flat", "kind": "flat", "n": 1_000_000, "dim": 512, "sweep": [
                   {"recall_at_10": 1.0, "ms_per_query_1thread": 70.0}]}]  # fmt: skip
    (tmp_path / "ann-1e6.json").write_text(json.dumps({"benchmark": "ann", "n": 1_000_000, "dim": 512,
                                                       "configs": {c["config"]: c for c in configs}}))  # fmt: skip
    bench = load_benchmarks(tmp_path)
    assert bench.sources() == [str(tmp_path / "ann-1e6.json")]
    # planning a measured point reproduces the measurement; hnswlib and fp16 rows are not visdex's plain indexes
    pq64 = next(c for c in codec_ladder(512) if c.kind == "pq" and c.bytes == 64)
    assert _search_ms("hnsw", 1_000_000, codec_ladder(512)[0], bench.ann) == pytest.approx(0.5)
    assert _search_ms("ivfpq", 1_000_000, pq64, bench.ann) == pytest.approx(1.0)
    assert _search_ms("flat", 1_000_000, codec_ladder(512)[0], bench.ann) == pytest.approx(70.0)
    assert plan_store(1_000_000, 512, reference=bench.ann).search_ms == pytest.approx(0.5)


# -- parsing and validation -------------------------------------------------------------------------
def test_parsing_sizes():
    assert parse_count("2_000_000") == 2_000_000 and parse_count("1.5k") == 1500 and parse_count(7) == 7
    assert parse_bytes("1TB") == 1024 and parse_bytes("256 MiB") == 0.25
    assert format_bytes(1536) == "1.5 kB"
    for bad in ("abc", "-5", "0", ""):
        with pytest.raises(ValueError):
            parse_count(bad)
    with pytest.raises(ValueError):
        parse_bytes("lots")


def test_constraints_are_validated():
    with pytest.raises(ValueError, match="query"):
        Constraints(query="audio")
    with pytest.raises(ValueError, match="domain"):
        Constraints(domain="cars")
    with pytest.raises(ValueError):
        Constraints(memory_gb=0)


def test_to_dict_is_json():
    d = json.loads(json.dumps(rec(query="both", labels="pairs", labelled=1000).to_dict()))
    assert set(d) >= {"constraints", "model", "training", "store", "latency", "notes", "sources", "commands"}
    assert d["store"]["memory"].endswith("B") and d["model"]["why"]


# -- the command ----------------------------------------------------------------------------------------
def test_cli_json(capsys):
    code, out, err = run_cli(capsys, "recommend", "--query", "visual", "--size", "50M", "--memory", "2GB", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert d["model"]["name"] == "dinov2-small" and d["store"]["dim"] == 128
    assert d["constraints"]["catalog_size"] == 50_000_000 and d["constraints"]["memory_gb"] == 2


def test_cli_report(capsys):
    code, out, err = run_cli(capsys, "recommend", "--query", "text", "--multilingual", "--labelled", "20k",
                             "--hardware", "gpu", "--domain", "faces", "--size", "5M")  # fmt: skip
    assert code == 0, err
    for text in ("siglip2-base", "contrastive image-text fine-tune", "why", "HNSW", "weak spot", "visdex index"):
        assert text in out
    assert "20,000 labelled pairs" in out  # --labelled without --labels means pairs


def test_cli_without_flags_and_without_a_terminal_uses_defaults(capsys):
    code, out, _ = run_cli(capsys, "recommend")
    assert code == 0 and "Recommendation" in out and "100,000 images" in out


def test_cli_bad_flags(capsys):
    code, _, err = run_cli(capsys, "recommend", "--size", "lots")
    assert code == 2 and "not a count" in err
    code, _, err = run_cli(capsys, "recommend", "--query", "audio")
    assert code == 2


def test_prompts_build_the_constraints():
    answers = "visual\n\n5M\n30\ngpu\nproducts\nclasses\n20k\n400\n4GB\n"
    c = prompt_constraints(Console(file=io.StringIO()), stream=io.StringIO(answers))
    assert c == Constraints(
        query="visual",
        catalog_size=5_000_000,
        latency_ms=30,
        hardware="gpu",
        domain="products",
        labels="classes",
        labelled=20_000,
        classes=400,
        memory_gb=4.0,
        multilingual=False,
    )
    retry = "text\ny\nlots\n1M\n\n\n\n\n\n"  # a bad size is asked again
    console_out = io.StringIO()
    c = prompt_constraints(Console(file=console_out), stream=io.StringIO(retry))
    assert c.catalog_size == 1_000_000 and c.multilingual and c.memory_gb is None
    assert "not a count" in console_out.getvalue()


def test_next_steps_build_the_recommended_store():
    """The commands make what the report recommends: the reduced model, then the index kind or the store."""
    small = rec(query="visual", catalog_size=50_000_000, memory_gb=2)
    assert small.store.dim == 128 < small.model.dim
    assert f"visdex finetune pca PHOTOS_DIR --model {small.model.name} -o runs/{small.model.name}-128 --dim 128" \
        in small.commands  # fmt: skip
    assert small.commands[-1] == f"visdex index PHOTOS_DIR --model runs/{small.model.name}-128 --ann ivfpq"
    labelled = rec(query="visual", catalog_size=50_000_000, memory_gb=2, labels="classes", labelled=5000, classes=100)
    assert any(c.startswith("visdex finetune labelled LABELLED_DIR") and c.endswith("--dim 128")
               for c in labelled.commands)  # fmt: skip
    roomy = rec(query="visual", catalog_size=1_000_000)
    assert roomy.store.index == "hnsw" and roomy.store.codec == "fp32"
    assert roomy.commands[-1].endswith(roomy.model.name) and "--ann" not in roomy.commands[-1]  # auto does it
    assert rec(query="both", catalog_size=10**9).commands[-1].endswith("--store milvus://MILVUS_HOST:19530 --ann hnsw")
    sq8 = [r for r in (rec(query="visual", catalog_size=3_000_000, memory_gb=g) for g in (1.5, 2.5, 4))
           if r.store.codec == "int8" and r.store.dim == r.model.dim]  # fmt: skip
    assert all(r.commands[-1].endswith("--ann hnsw-sq8") for r in sq8)
