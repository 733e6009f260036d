"""How fast duplicates move to the trash and come back: ``N`` small photos plus an exact copy of each, indexed
with a tiny random CLIP; then ``visdex.trash`` moves the ``N`` copies (one batch) and undoes it, by rename (one
file system) and by copy + fsync + verify + unlink (to /dev/shm when it is another file system, else forced).
Every byte is checked back after each undo.

    python benchmarks/trash_moves.py --files 500     # -> results/trash_moves.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def run(work: Path, files: int) -> dict:
    from crash_loop import make_folder

    from visdex import open_index
    from visdex.dupes import find_duplicates
    from visdex.trash import move_to_trash, plan_from_groups, undo

    from tinymodels import make_tiny_clip

    folder = work / "photos"
    make_folder(folder, files)
    (folder / "copies").mkdir()
    for p in list(folder.glob("*.jpg")):
        shutil.copy2(p, folder / "copies" / p.name)
    model = make_tiny_clip(work / "clip")
    with open_index(work / "ix", model=str(model)) as ix:
        ix.add([folder], workers=1)
    before = _hashes(folder)
    shm = Path("/dev/shm")
    other_fs = shm.is_dir() and os.access(shm, os.W_OK) and os.stat(shm).st_dev != os.stat(work).st_dev
    out: dict = {"files": files, "copy_target": "/dev/shm (another file system)" if other_fs else "forced copy"}
    with open_index(work / "ix") as ix:
        t = time.perf_counter()
        plan = plan_from_groups(ix, find_duplicates(ix, exact_only=True))
        out["plan_s"] = round(time.perf_counter() - t, 3)
        out["bytes"] = plan.bytes
        for how in ("rename", "copy"):
            trash = Path(tempfile.mkdtemp(dir=shm if other_fs else work, prefix="trash-")) if how == "copy" else None
            t = time.perf_counter()
            report = move_to_trash(ix, plan, trash, copy=how == "copy" and not other_fs)
            moved = time.perf_counter() - t
            assert len(report.moved) == files, report.failed[:3]
            t = time.perf_counter()
            back = undo(ix, report.batch)
            restored = time.perf_counter() - t
            assert len(back.restored) == files and _hashes(folder) == before
            out[how] = {"move_s": round(moved, 3), "undo_s": round(restored, 3),
                        "move_files_per_s": round(files / moved, 1), "undo_files_per_s": round(files / restored, 1),
                        "copied": report.copied}  # fmt: skip
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "trash_moves.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="visdex-trash-") as tmp:
        res = run(Path(tmp), args.files)
    res["load_average"] = [round(x, 2) for x in os.getloadavg()]
    res["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    res["command"] = "python benchmarks/trash_moves.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
