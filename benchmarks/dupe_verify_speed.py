"""Speed of the duplicate verification stage (ORB + RANSAC, visdex.dupe_verify) on the real-photo dupeset, before
and after side by side in one run, on the same candidate pairs.

    python benchmarks/dupe_verify_speed.py                  # -> benchmarks/results/quality-dupe-verify-speed.json
    python benchmarks/dupe_verify_speed.py --twins 0        # the plain dupeset, no exact duplicates

The set is tests/dupeset.py (21 captures, each with 10 edited copies: 223 files) plus, as a photo library with
backups has, ``--twins`` of each original stored again unchanged: a byte copy (found by its content hash, never a
candidate pair) and a PNG with the same decoded pixels (a candidate pair, exact once verified). Candidate pairs
come from effnet-lite0 at its default threshold; then three verifiers run on the same pairs, each with a fresh
image cache:

- ``naive``: every pair decoded and described anew (ORB per pair, no skipping);
- ``before``: the previous loop (visdex before this change): ORB features cached per image; every pair of the same
  size decoded in full for a pixel digest first; every pair compared, exact duplicates included;
- ``after``: :func:`visdex.dupes.verify_pairs`: features cached per image, a full decode only when the small views
  agree, a pair inside an exact set skipped, a pair of exact sets compared once.

Pairs/s = candidate pairs / seconds of the verifier (decoding included). The verdicts of ``before`` and ``after``
must agree: the script fails otherwise."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def add_twins(d: Path, groups: dict[str, list[Path]], twins: int) -> int:
    """Per original: a byte copy and a same-pixels PNG, ``twins`` times each. Returns files added."""
    from PIL import Image, PngImagePlugin

    n = 0
    for name, (original, *_) in groups.items():
        for t in range(twins):
            backup = d / f"backup{t}"
            backup.mkdir(exist_ok=True)
            shutil.copyfile(original, backup / original.name)
            info = PngImagePlugin.PngInfo()
            info.add_text("Comment", f"exported {t}")
            Image.open(original).convert("RGB").save(backup / f"{name}.png", pnginfo=info)
            n += 2
    return n


def before(ix, pairs, exact) -> dict:
    """The previous verification loop, as it was (visdex.dupes before this change)."""
    from visdex import dupe_verify as dv
    from visdex.dupes import ImageCache

    cache = ImageCache(ix, True)
    out = {}
    for a, b in pairs:
        if cache.same_pixels(a, b):
            exact.union(a, b)
            out[(a, b)] = "exact"
            continue
        fa, fb = cache.features(a), cache.features(b)
        if fa is None or fb is None:
            out[(a, b)] = None
            continue
        out[(a, b)] = dv.relation(dv.compare(fa, fb))
    return out


def naive(ix, pairs) -> dict:
    """Every pair decoded and described anew."""
    from visdex import dupe_verify as dv
    from visdex.decode import decode_image

    paths = ix.db.files_by_ids(sorted({i for p in pairs for i in p}))
    out = {}
    for a, b in pairs:
        fa, fb = (dv.features(decode_image(paths[i].path, draft_size=dv.SIDE).image) for i in (a, b))
        out[(a, b)] = dv.relation(dv.compare(fa, fb))
    return out


def after(ix, pairs, exact):
    from visdex.dupes import Verified, verify_pairs

    return verify_pairs(ix, pairs, exact, Verified())


def verdicts(found, pairs, exact) -> dict:
    copies = {(a, b) for _, a, b in found.copies}
    similar = set(found.similar)
    return {p: "copy" if p in copies else "similar shot" if p in similar else
            "exact" if exact.find(p[0]) == exact.find(p[1]) else None for p in pairs}  # fmt: skip


def fresh_exact(ix):
    from visdex.dupes import UnionFind
    from visdex.store.dupes_sql import same_hash_groups

    uf = UnionFind()
    for first, *rest in same_hash_groups(ix.db):
        for other in rest:
            uf.union(first, other)
    return uf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--twins", type=int, default=1, help="Unchanged copies of each original (0: none).")
    ap.add_argument("--model", default="effnet-lite0")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality-dupe-verify-speed.json"))
    args = ap.parse_args()
    from dupeset import build
    from visdex import open_index
    from visdex.dupes import candidate_pairs, default_threshold

    with tempfile.TemporaryDirectory() as t:
        d = Path(t) / "set"
        groups = build(d)
        extra = add_twins(d, groups, args.twins)
        with open_index(Path(t) / "ix", model=args.model) as ix:
            t0 = time.perf_counter()
            ix.add([d])
            index_s = time.perf_counter() - t0
            exact0 = fresh_exact(ix)
            pairs = [(a, b) for a, b, _ in candidate_pairs(ix, default_threshold(args.model))
                     if exact0.find(a) != exact0.find(b)]  # fmt: skip
            res: dict = {"files": len(ix.store.ids()), "twins_added": extra, "candidate_pairs": len(pairs),
                         "index_seconds": round(index_s, 1)}  # fmt: skip
            runs = {}
            for name in ("naive", "before", "after"):
                if name == "naive" and args.skip_naive:
                    continue
                exact = fresh_exact(ix)
                t0 = time.perf_counter()
                got = naive(ix, pairs) if name == "naive" else before(ix, pairs, exact) if name == "before" else (
                    after(ix, pairs, exact))  # fmt: skip
                s = time.perf_counter() - t0
                entry = {"seconds": round(s, 2), "pairs_per_second": round(len(pairs) / s, 1)}
                if name == "after":
                    entry.update(compared=got.compared, skipped=got.skipped)
                    got = verdicts(got, pairs, exact)
                runs[name] = (entry, got)
                print(name, json.dumps(entry), flush=True)
            same = runs["before"][1] == runs["after"][1]
            res["runs"] = {k: v[0] for k, v in runs.items()}
            res["speedup_after_vs_before"] = round(runs["before"][0]["seconds"] / runs["after"][0]["seconds"], 2)
            res["same_verdicts"] = same
            if not same:
                diff = [p for p in pairs if runs["before"][1][p] != runs["after"][1][p]]
                res["differing"] = [(runs["before"][1][p], runs["after"][1][p]) for p in diff[:20]]
    out = {"benchmark": "dupe verification speed (benchmarks/dupe_verify_speed.py)", "load_average": os.getloadavg(),
           "cpus": os.cpu_count(), **res}  # fmt: skip
    print(json.dumps(out, indent=1))
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    if not out["same_verdicts"]:
        sys.exit("before and after disagree")


if __name__ == "__main__":
    main()
