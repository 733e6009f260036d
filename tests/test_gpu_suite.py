"""benchmarks/gpu_suite.py, the one-command GPU benchmark, run as the GPU machine runs it but with --dry-run:
every part's real code on the CPU at tiny sizes, one JSON with every part's numbers and no target claimed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"
PARTS = ["ingest_6mp", "ingest_small", "models", "dupes"]


def _suite(tmp: Path, *args: str, timeout: int = 300) -> dict:
    out = tmp / "suite.json"
    proc = subprocess.run([sys.executable, str(SUITE), "--out", str(out), "--work", str(tmp / "work"), *args],
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> dict:
    return _suite(tmp_path_factory.mktemp("gpu-suite"), "--dry-run")


def test_dry_run_measures_every_part(dry_run):
    parts = dry_run["parts"]
    assert list(parts) == PARTS
    for name, part in parts.items():
        assert part["status"] == "ok", (name, part.get("reason"), part.get("errors"), part.get("skipped_steps"))
        assert part["device"]["torch"] and part["device"]["name"].startswith("CPU")
    for name in ("ingest_6mp", "ingest_small"):
        p = parts[name]
        for mode in ("gpu", "cpu"):
            run = p[f"ingest_decode_{mode}"]
            assert run["images"] == p["images"]["files"] > 0 and run["failed"] == 0 and run["img_per_s"] > 0
        assert p["decode_only_gpu_route"]["images"] == p["images"]["files"]
        assert p["decode_only_pil_workers"]["img_per_s"] > 0
    assert parts["ingest_small"]["catalog_csv"]["items"] == parts["ingest_small"]["sizes"]["catalog_items"]
    for model in ("clip-vit-b-32", "clip-vit-b-16", "dinov2-small"):
        assert parts["models"][model]["img_per_s"] > 0
    dupes = parts["dupes"]
    assert dupes["vectors"] == 2000
    for run in ("on_device", "through_store"):
        assert dupes[run]["planted_pairs"] == 20 and dupes[run]["recall_planted"] == 1.0  # exact k-NN finds them all


def test_dry_run_claims_no_target(dry_run):
    assert dry_run["dry_run"] is True and dry_run["targets_met"] is None
    assert all(p["target_met"] is None for p in dry_run["parts"].values())
    assert dry_run["machine"]["cpu"] and dry_run["total_s"] > 0


def test_a_part_past_its_budget_is_stopped_and_recorded(tmp_path):
    result = _suite(tmp_path, "--dry-run", "--parts", "dupes", "--budget-scale", "0.004")  # 0.3 s: killed early
    part = result["parts"]["dupes"]
    assert part["status"] == "timeout" and "budget" in part["reason"] and part["target_met"] is None


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the skip on a machine without CUDA")
def test_without_cuda_a_real_run_skips_with_a_reason(tmp_path):
    part = _suite(tmp_path, "--parts", "dupes")["parts"]["dupes"]
    assert part["status"] == "skipped" and "no CUDA" in part["reason"] and part["target_met"] is None
