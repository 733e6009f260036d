"""``visdex bench`` and the benchmark functions, on a tiny model and small generated photos (fast)."""

from __future__ import annotations

import json

import pytest

from visdex import bench

from clihelp import run_cli


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench-photos")
    return folder, bench.make_photo_set(folder, 8, megapixels=0.3)


def test_photo_set_is_real_sized_distinct_and_reused(small_set):
    from PIL import Image

    folder, paths = small_set
    sizes = {Image.open(p).size for p in paths}
    assert sizes == {(671, 447)}  # 0.3 MP at 3:2
    assert len({p.read_bytes() for p in paths}) == len(paths)
    mtimes = [p.stat().st_mtime_ns for p in paths]
    assert bench.make_photo_set(folder, 8, megapixels=0.3) == paths
    assert [p.stat().st_mtime_ns for p in paths] == mtimes  # made once


def test_bench_command_writes_valid_json(capsys, tmp_path, small_set, tiny_clip):
    folder, paths = small_set
    out_file = tmp_path / "results" / "run.json"
    code, out, err = run_cli(
        capsys, "bench", folder, "--model", str(tiny_clip), "-s", "decode", "-s", "model", "-s", "ingest", "-s",
        "naive", "-s", "query", "--workers", "1", "--batch-size", "4", "--model-images", "8", "-o", out_file,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out_file.read_text())
    assert result["folder_images"] == len(paths)
    m = result["machine"]
    assert m["cpu"] and m["logical_cores"] >= 1 and m["torch_version"] and m["date"][:2] == "20"
    r = result["results"]
    for name in ("decode", "model", "ingest", "naive"):
        assert r[name]["img_per_s"] > 0, name
    assert r["ingest"]["images"] == r["naive"]["images"] == len(paths)
    assert 0 < r["query"]["warm_p50_ms"] <= r["query"]["warm_p99_ms"] and r["query"]["cold_start_s"] > 0
    ratios = result["ratios"]
    assert set(ratios) == {"ingest_over_min_decode_model", "ingest_over_shared_core_bound", "ingest_over_naive"}
    assert "img/s" in out  # the table


def test_bench_rejects_an_unknown_suite(capsys, small_set):
    code, out, err = run_cli(capsys, "bench", small_set[0], "-s", "warp-speed")
    assert code == 2 and "unknown benchmark warp-speed" in err


def test_onnx_bench_reports_speed_and_cosine(tmp_path, small_set, tiny_dinov2, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("VISDEX_CACHE_DIR", str(tmp_path / "cache"))
    r = bench.bench_onnx(str(tiny_dinov2), small_set[1][:4], n=8, batch_size=4)
    assert set(r["backends"]) == {"torch", "onnx", "onnx-int8"}
    assert r["backends"]["torch"]["speedup_vs_torch"] == 1.0
    assert r["backends"]["onnx"]["cosine_min"] > 0.9999 and r["backends"]["onnx-int8"]["cosine_min"] > 0.99
    assert all(v["img_per_s"] > 0 for v in r["backends"].values())
