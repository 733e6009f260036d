"""Does `visdex finetune labelled` help on held-out data? effnet-lite0 (real weights, offline) on the
labelled instance-retrieval set of tests/variantset.py, before and after, measured by the same
leave-one-out evaluation as `visdex eval labelled` (Recall@K, mAP@R).

Three held-out protocols on the same generator (regions of 14 scikit-image / scikit-learn photos,
each region a class, each class re-shot ``--variants`` times):

``sources``  variantset's own split: train on regions of 9 photos, pick the epoch on 2 others,
             report on 3 more (astronaut, coffee, china). Strict (new photos) but near the ceiling:
             the base model already ranks these almost perfectly.
``regions``  the classic metric-learning protocol (new classes of the same domain, as CUB / SOP
             splits are): the same 14 photos, even-numbered regions train, regions 1, 5, 9, ...
             pick the epoch, regions 3, 7, 11, ... are the test classes. No test region is seen.
``images``   new photos of known classes (search your catalog with new shots of its items): every
             region is a class; variants 0-7 train, 8-11 pick the epoch, 12-15 are the test images.

The frozen part of the network runs once per image (cached); only the last ``--train-blocks``
blocks train. Each protocol is one `visdex finetune` run (its command line is recorded)::

    python benchmarks/finetune_lift.py                         # all protocols, ~20 min on 2 cores
    python benchmarks/finetune_lift.py --protocols regions --epochs 4

Writes benchmarks/results/finetune-lift.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

PROTOCOLS = ("sources", "regions", "images")


def build_sources(work: Path, variants: int, seed: int) -> dict[str, Path]:
    from variantset import build_split

    root = work / f"sources-v{variants}-s{seed}"
    if not (root / "done").is_file():
        build_split(root, variants=variants, seed=seed)
        (root / "done").write_text("")
    return {"train": root / "train", "val": root / "val", "test": root / "test"}


def _all_regions(work: Path, variants: int, seed: int) -> Path:
    """Every region of the 14 photos, one folder per class (shared by the regions and images protocols)."""
    from variantset import SPLITS, build

    root = work / f"regions-v{variants}-s{seed}"
    if not (root / "done").is_file():
        build(root / "all", [s for names in SPLITS.values() for s in names], variants=variants, seed=seed)
        (root / "done").write_text("")
    return root


def build_regions(work: Path, variants: int, seed: int) -> dict[str, Path]:
    """CSVs of path,label splitting the classes by region number."""
    root = _all_regions(work, variants, seed)
    parts: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for cls in sorted(p for p in (root / "all").iterdir() if p.is_dir()):
        region = int(cls.name.rsplit("-r", 1)[1])
        split = "train" if region % 2 == 0 else "val" if region % 4 == 1 else "test"
        parts[split] += [(str(f), cls.name) for f in sorted(cls.glob("*.jpg"))]
    return _write_csvs(root, "regions", parts)


def build_images(work: Path, variants: int, seed: int) -> dict[str, Path]:
    """CSVs of path,label splitting every class's variants: first half train, then a quarter each."""
    root = _all_regions(work, variants, seed)
    parts: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for cls in sorted(p for p in (root / "all").iterdir() if p.is_dir()):
        for f in sorted(cls.glob("*.jpg")):
            v = int(f.stem[1:])
            split = "train" if v < variants // 2 else "val" if v < variants * 3 // 4 else "test"
            parts[split].append((str(f), cls.name))
    return _write_csvs(root, "images", parts)


def _write_csvs(root: Path, name: str, parts: dict[str, list[tuple[str, str]]]) -> dict[str, Path]:
    out = {}
    for split, rows in parts.items():
        out[split] = root / f"{name}-{split}.csv"
        with open(out[split], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows(rows)
    return out


class Log:
    """Progress lines on stderr: phases and epochs, with elapsed time."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def _say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {text}", file=sys.stderr, flush=True)

    def phase(self, label: str, total: int) -> None:
        self._say(f"{label} ({total})")

    def start(self, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def failed(self, path: str, reason: str) -> None:
        self._say(f"skipped {path}: {reason}")

    def epoch_done(self, epoch: int, epochs: int, loss: float, score: float, best: bool) -> None:
        self._say(f"epoch {epoch}/{epochs} loss {loss:.4f} held-out mAP@R {score:.4f}{' best' if best else ''}")


def run_protocol(name: str, sets: dict[str, Path], cfg: dict, args) -> dict:
    """One `visdex finetune labelled` run (through the library) and its before / after numbers."""
    from visdex.train import finetune_labelled

    tag = "-".join(f"{k}{v}" for k, v in cfg.items())
    out_dir = args.work / "runs" / f"{name}-{args.model}-{tag}"
    if out_dir.exists() and not args.resume:
        shutil.rmtree(out_dir)  # a fresh run: results always come from the code as it is now
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in cfg.items())
    command = (f"visdex finetune labelled {sets['train']} --val {sets['val']} --test {sets['test']} "
               f"-m {args.model} -o {out_dir} {flags} --device cpu")  # fmt: skip
    t0 = time.perf_counter()
    res = finetune_labelled(args.model, sets["train"], out_dir, val=sets["val"], test=sets["test"], device="cpu",
                            resume=args.resume and (out_dir / "training" / "state.pt").is_file(), progress=Log(),
                            **cfg)  # fmt: skip
    d = res.to_dict()
    key = {k: d["change"][k] for k in ("recall@1", "recall@10", "map@r") if k in d["change"]}
    ceiling = round(1 / d["before"]["map@r"] - 1, 4) if d["before"].get("map@r") else None  # the most mAP@R can gain
    print(f"{name} ({tag}): " + ", ".join(f"{k} {v['before']:.3f} -> {v['after']:.3f} ({v['relative']:+.1%})"
                                         for k, v in key.items()), flush=True)  # fmt: skip
    return {"protocol": name, "command": command, "wall_seconds": round(time.perf_counter() - t0, 1),
            "heldout": d["heldout"], "before": d["before"], "after": d["after"], "change": d["change"],
            "headline": key, "best_epoch": d["best_epoch"], "history": d["history"], "settings": d["settings"],
            "meets_15pct": any(v["relative"] >= 0.15 for k, v in key.items() if k in ("recall@10", "map@r")),
            "max_relative_map@r": ceiling}  # fmt: skip


BUILDERS = {"sources": build_sources, "regions": build_regions, "images": build_images}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    p.add_argument("--model", default="effnet-lite0")
    p.add_argument("--variants", type=int, default=16)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-blocks", type=int, default=4)
    p.add_argument("--dim", type=int, default=0)
    p.add_argument("--loss", default="supcon")
    p.add_argument("--augment", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--head-only-epochs", type=int, default=20, help="also train a head alone (0: skip)")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs in --work")
    p.add_argument("--work", type=Path, default=Path("/tmp/visdex-finetune-lift"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "finetune-lift.json")
    args = p.parse_args()

    from visdex import bench

    os.environ.setdefault("VISDEX_CACHE_DIR", str(args.work / "cache"))
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    cfg = {k: getattr(args, k) for k in ("train_blocks", "dim", "loss", "augment", "epochs", "batch_size", "lr",
                                         "seed")}  # fmt: skip
    # the same data with a projection head alone on the frozen network's vectors, for comparison
    head_cfg = {**cfg, "train_blocks": 0, "dim": 128, "epochs": args.head_only_epochs}
    results, head_only = [], []
    for name in args.protocols:
        sets = BUILDERS[name](args.work, args.variants, args.seed)
        results.append(run_protocol(name, sets, cfg, args))
        if args.head_only_epochs:
            head_only.append(run_protocol(name, sets, head_cfg, args))
    out = {
        "benchmark": "finetune-lift",
        "what": "effnet-lite0 metric learning (last blocks on cached frozen-prefix features) on tests/variantset.py; "
        "held-out leave-one-out Recall@K / mAP@R before and after, as `visdex eval labelled` computes them",
        "model": args.model,
        "variants": args.variants,
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "out", "protocols")},
        "results": results,
        "head_only": head_only,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "machine": bench.machine_info(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
