"""The documentation stays true.

1. Every setting and every CLI command is documented somewhere in README.md + docs/*.md.
2. Every shell block (```bash / sh / shell / console) in README.md and docs/*.md is run: each `visdex ...`
   command goes through the real CLI in-process, in a sandbox (a photo folder from scikit-image's bundled
   photos, HOME, the index and /tmp inside a temp dir), with tiny or offline stand-ins for hub models. A
   documented command that exits non-zero or prints a traceback fails with its file:line. Commands that cannot
   run here are listed, with the reason, in SKIP; the few that take minutes in SLOW (run with ``-m slow``).

Blocks run in document order on one sandbox: README.md's blocks from a fresh one (a new user's machine), each
docs page's from the state the README leaves (it assumes the reader did the README's set-up).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from visdex import config

from clihelp import run_cli

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS = "\n".join(p.read_text() for p in DOC_FILES)


# -- 1. everything is documented -------------------------------------------------------------------------------


def test_every_setting_is_documented():
    for s in config.SETTINGS:
        assert f"`{s.env}`" in DOCS, f"{s.env} is not in the settings table (docs/settings.md)"


def _command_names() -> set[str]:
    from visdex.cli import _load_command_modules, app

    _load_command_modules()
    groups = {g.name for g in app.registered_groups}  # `visdex trash list|undo`
    return {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands} | groups


def test_every_cli_command_is_documented():
    for name in _command_names():
        assert re.search(rf"visdex {name}\b", DOCS), f"`visdex {name}` is not shown in README.md or docs/"


def test_docs_commands_exist():
    names = _command_names()
    shown = {c.argv[1] for b in BLOCKS for c in b.commands if c.argv[:1] == ("visdex",) and len(c.argv) > 1}
    for used in shown | set(re.findall(r"`visdex ([a-z][\w-]*)", DOCS)):
        assert used in names or used.startswith("-"), f"the docs show `visdex {used}`, which does not exist"


def test_readme_keeps_the_ci_test_command():
    """.ci/run runs the README's test command verbatim; the two must not drift apart."""
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    assert f"\n{command}\n" in (ROOT / "README.md").read_text()


def _anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.M | re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_doc_links_resolve():
    for doc in DOC_FILES:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", doc.read_text()):
            if "://" in target:
                continue
            path = (doc.parent / target) if target else doc
            assert path.exists(), f"{doc.relative_to(ROOT)} links to missing {target}"
            if anchor and path.suffix == ".md":
                assert anchor in _anchors(path), f"{doc.relative_to(ROOT)} links to {target}#{anchor}: no such heading"


def test_env_overrides_default(monkeypatch):
    monkeypatch.setenv("VISDEX_BATCH_SIZE", "7")
    assert config.get("batch_size") == 7
    monkeypatch.delenv("VISDEX_BATCH_SIZE")
    assert config.get("batch_size") == 32


# -- 2. every documented command runs ---------------------------------------------------------------------------

# Commands not run here, each with the reason. Patterns match a command's words (the shell's quotes removed).
SKIP = [
    (r"^(python3 -m venv|\. \.venv/bin/activate|pip (install|uninstall)|git pull)\b",
     "installs visdex: this test runs inside the installed package"),
    (r"^(python -m pytest|ruff)\b", "the test suite and lint themselves (.ci/run)"),
    (r"^rm -rf ~", "deletes the user's data folders (uninstalling)"),
    (r"^python benchmarks/", "benchmarks: minutes to hours each"),
    (r"^docker compose\b", "needs Docker"),
    (r"^visdex serve\b|^curl\b", "a long-running server; tests/test_server.py drives every endpoint"),
    (r"milvus(\+https)?://", "needs a Milvus server; the milvus-lite forms run"),
    (r"runs/dino-128", "a 128-d PCA needs >= 256 images (tests/test_pca.py fits one)"),
]  # fmt: skip

# Commands that run only with `-m slow`: benchmark suites and ONNX exports take minutes on 2 cores.
SLOW = [r"^visdex bench\b", r"^visdex index\b.*--model onnx"]

# Documented commands that fail because of a bug in src/: "file:line" of the block -> the bug.
KNOWN_BUGS: dict[str, str] = {}

SEPARATORS = {"&&", "||", ";", "|"}
SHELLS = {"bash", "sh", "shell", "console"}


@dataclass(frozen=True)
class Command:
    file: str  # relative to the repository
    line: int
    text: str  # the words as the shell reads them (quotes removed), without the comment
    argv: tuple[str, ...]
    piped_to: tuple[str, ...] = ()  # the next command of a pipeline: not run, but `jq` means "stdout is JSON"
    exit_code: int = 0  # a "# exit code N" comment documents a failure on purpose

    def skip_reason(self) -> str | None:
        return next((why for pattern, why in SKIP if re.search(pattern, self.text)), None)

    def slow(self) -> bool:
        return any(re.search(pattern, self.text) for pattern in SLOW)


@dataclass(frozen=True)
class Block:
    file: str
    line: int
    commands: tuple[Command, ...]

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def _split(file: str, line: int, source: str) -> list[Command]:
    """One shell line -> its commands (``a && b | jq``), quotes and ``# comments`` handled as bash does."""
    lex = shlex.shlex(source, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    tokens = list(lex)
    expected = re.search(r"#.*\bexit code (\d+)", source)
    commands, current = [], []
    for tok in [*tokens, "&&"]:
        if tok not in SEPARATORS:
            assert not set(tok) <= set("()<>&"), f"{file}:{line}: unsupported shell syntax {tok!r} in: {source}"
            current.append(tok)
            continue
        commands.append((tuple(current), tok))
        current = []
    out = []
    for i, (argv, sep) in enumerate(commands):
        if i and commands[i - 1][1] == "|":
            continue  # a pipeline's consumer: recorded on its producer below
        piped = commands[i + 1][0] if sep == "|" else ()
        out.append(Command(file, line, " ".join(argv), argv, piped, int(expected[1]) if expected else 0))
    return out


def doc_blocks(path: Path) -> list[Block]:
    """The shell blocks of a Markdown file, in order; a ``console`` block's commands are its ``$ `` lines."""
    rel = path.relative_to(ROOT).as_posix()
    blocks, lines, fence = [], path.read_text().splitlines(), None
    for n, raw in enumerate(lines, 1):
        if fence is None:
            m = re.match(r"^```(\w+)", raw)
            if m:
                fence, start, body = m[1], n, []
            continue
        if not raw.startswith("```"):
            body.append((n, raw))
            continue
        if fence in SHELLS:
            commands, joined, first = [], "", 0
            for k, text in body:
                if fence == "console":
                    if not text.startswith("$ "):
                        continue
                    text = text[2:]
                first = first or k
                joined += text.rstrip("\\") + " " if text.endswith("\\") else text
                if text.endswith("\\"):
                    continue
                if joined.strip() and not joined.lstrip().startswith("#"):
                    commands += _split(rel, first, joined)
                joined, first = "", 0
            blocks.append(Block(rel, start, tuple(commands)))
        fence = None
    return blocks


BLOCKS = [b for doc in DOC_FILES for b in doc_blocks(doc)]


def _param(block: Block):
    runnable = [c for c in block.commands if not c.skip_reason()]
    marks = [pytest.mark.slow] if any(c.slow() for c in runnable) else []
    if block.id in KNOWN_BUGS:
        marks.append(pytest.mark.xfail(reason=KNOWN_BUGS[block.id], strict=True))
    return pytest.param(block, id=block.id, marks=marks)


# Files the examples in the docs assume the reader has, built from scikit-image's bundled photos.
SHOTS = {  # name: (photo, subfolder, EXIF date taken, (make, model), format)
    "ref": ("coffee", ".", "2024-03-02T08:15:00", ("Apple", "iPhone 13"), "JPEG"),
    "IMG_0001": ("chelsea", ".", "2023-06-10T17:40:00", ("Apple", "iPhone 13"), "JPEG"),
    "IMG_0002": ("astronaut", "trips/2023", "2023-08-01T12:00:00", ("Canon", "EOS R6"), "JPEG"),
    "IMG_0003": ("rocket", "trips/2023", "2023-08-02T06:30:00", ("Canon", "EOS R6"), "JPEG"),
    "moon": ("moon", "trips", "2021-11-19T22:05:00", None, "JPEG"),
    "coins": ("coins", "raw", None, None, "PNG"),
    "Screenshot 1": ("camera", "screenshots", None, None, "PNG"),
}  # fmt: skip


def _make_sandbox_files(root: Path) -> None:
    import variantset

    from imagefactory import real_photos, write_photo, write_shots

    photos = real_photos()
    shutil.copytree(ROOT / "examples" / "photos", root / "examples" / "photos")  # the README's own sample
    write_shots(root / "home" / "Pictures", SHOTS)
    write_photo(root, "ref", photos["chelsea"])
    write_photo(root, "street", photos["astronaut"])
    (root / "photos").mkdir()
    captions = {
        "chelsea": "a tabby cat",
        "coffee": "a cup of coffee",
        "rocket": "a rocket launch",
        "astronaut": "an astronaut in a suit",
        "moon": "the moon at night",
        "camera": "a man with a camera",
        "coins": "old coins on a table",
        "hubble_deep_field": "galaxies in deep space",
        "immunohistochemistry": "stained tissue under a microscope",
        "retina": "a photo of a retina",
    }
    for name in captions:
        write_photo(root / "photos", name, photos[name])
    rows = "".join(f"photos/{k}.jpg,{v}\nphotos/{k}.jpg,a photo of {v.split(' ', 1)[1]}\n" for k, v in captions.items())
    for name in ("captions.csv", "pairs.csv"):
        (root / name).write_text("image,caption\n" + rows)
    variantset.build(root / "labelled", ["coffee"], variants=3)  # 6 classes x 3 re-shot variants
    variantset.build_split(root, variants=3, splits={"train": ("coffee",), "val": ("chelsea",), "test": ("rocket",)})
    (root / "img").mkdir()
    for name, photo in (("mug-front", "coffee"), ("mug-side", "coffee"), ("plush", "chelsea")):
        write_photo(root / "img", name, photos[photo])
    (root / "items.csv").write_text(  # as docs/catalogs.md shows it
        "sku,images,title,color\nmug-1,img/mug-front.jpg|img/mug-side.jpg,espresso cup,red\n"
        "cat-7,img/plush.jpg,tabby kitten plush,orange\n"
    )
    (root / "labels.txt").write_text("beach\nmountain\ncity\nfood\npets\n")
    for d in ("docs", "tmp", "runs"):
        (root / d).mkdir()


class Sandbox:
    """One directory where the docs' commands run, in document order.

    Blocks of README.md start from fresh files; those of a docs page from the state README.md's blocks leave.
    Running a block first runs the earlier blocks of its file that have not run (so ``-k`` can pick one).
    """

    def __init__(self, root: Path, keep: Path, standins: dict[str, str]):
        self.root, self.keep, self.standins = root, keep, standins
        self.file: str | None = None
        self.done: set[str] = set()

    def _reset(self, to: Path) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.copytree(to, self.root, symlinks=True)
        self.done.clear()

    def run(self, block: Block, capsys, monkeypatch) -> list[str]:
        if block.file != self.file:
            if block.file == "README.md":
                self._reset(self.keep / "fresh")
            else:
                if not (self.keep / "after-readme").exists():
                    self._reset(self.keep / "fresh")
                    self.file = "README.md"
                    for b in BLOCKS:
                        if b.file == "README.md":
                            self._run_block(b, capsys, monkeypatch, slow_ok=False)
                    shutil.copytree(self.root, self.keep / "after-readme", symlinks=True)
                self._reset(self.keep / "after-readme")
            self.file = block.file
        for b in BLOCKS:
            if b.file == block.file and b.line < block.line and b.id not in self.done:
                self._run_block(b, capsys, monkeypatch, slow_ok=False)
        return self._run_block(block, capsys, monkeypatch, True)

    def _run_block(self, block: Block, capsys, monkeypatch, slow_ok: bool) -> list[str]:
        # A replayed block skips its SLOW commands: nothing later depends on them.
        self.done.add(block.id)
        failures = []
        for cmd in block.commands:
            if cmd.skip_reason() or (cmd.slow() and not slow_ok):
                continue
            if cmd.argv[0] != "visdex":
                failures.append(
                    f"{cmd.file}:{cmd.line}: `{cmd.text}` is not a visdex command: this test cannot run "
                    f"it; make it one, or add it to SKIP in tests/test_docs.py with the reason"
                )
                continue
            failures += self._run_command(cmd, capsys, monkeypatch)
        return failures

    def _run_command(self, cmd: Command, capsys, monkeypatch) -> list[str]:
        argv = self.substitute(cmd.argv[1:])
        home = self.root / "home"
        with monkeypatch.context() as m:
            m.chdir(self.root)
            m.setenv("HOME", str(home))
            m.setenv("VISDEX_INDEX", str(home / ".local" / "share" / "visdex" / "index"))
            m.setenv("VISDEX_MODEL", self.standins[next(s.default for s in config.SETTINGS if s.name == "model")])
            code, out, err = run_cli(capsys, *argv)
        where = f"{cmd.file}:{cmd.line}: `{cmd.text}`\n  ran: visdex {shlex.join(argv)}"
        problems = []
        if code != cmd.exit_code:
            problems.append(f"exited {code}, not {cmd.exit_code}")
        if "Traceback (most recent call last)" in out + err:
            problems.append("printed a traceback")
        if cmd.piped_to[:1] == ("jq",):
            try:
                [json.loads(line) for line in out.splitlines() if line.strip()]
            except ValueError as e:
                problems.append(f"is piped to jq but its output is not JSON ({e})")
        if not problems:
            return []
        return [f"{where}\n  {'; '.join(problems)}\n  stdout: {out[-1500:]}\n  stderr: {err[-3000:]}"]

    def substitute(self, argv: tuple[str, ...]) -> list[str]:
        """The sandbox's paths for ``~`` and ``/tmp/``, stand-ins for hub models (no download here), and one
        training epoch."""
        out = []
        for i, arg in enumerate(argv):
            if arg == "~" or arg.startswith("~/"):
                arg = str(self.root / "home") + arg[1:]
            elif arg.startswith("/tmp/"):
                arg = str(self.root / "tmp") + arg[4:]
            elif i and argv[i - 1] in ("--model", "-m"):
                prefix, _, name = arg.rpartition(":") if arg.startswith(("onnx:", "onnx-int8:")) else ("", "", arg)
                arg = (prefix + ":" if prefix else "") + self.standins.get(name, name)
            out.append(arg)
        if out[:1] == ["finetune"] and out[1:2] != ["pca"]:  # one epoch proves the command; ten take minutes
            out = [a for i, a in enumerate(out) if "--epochs" not in (a, out[i - 1])] + ["--epochs", "1"]
        return out


@pytest.fixture(scope="session")
def model_standins(tiny_clip, tiny_siglip) -> dict[str, str]:
    """Hub model name -> a model that needs no download. CLIP and SigLIP: a tiny random-weight model of the
    family (tests/tinymodels.py), which runs the family's own code (tokenizer, towers, LoRA) in a fraction of
    the time an offline model takes. DINOv2 (image only): the offline EfficientNet-Lite0, whose 1280-d vectors,
    like DINOv2's, take the docs' --dim 128 (the tiny DINOv2 makes 32-d ones)."""
    from visdex.models import list_models

    by_family = {"clip": str(tiny_clip), "open_clip": str(tiny_clip), "siglip": str(tiny_siglip),
                 "dinov2": "effnet-lite0", "timm": "effnet-lite0"}  # fmt: skip
    standins = {}
    for spec in list_models():
        if not spec.offline:
            assert spec.family in by_family, f"add a stand-in for the {spec.family} family to model_standins"
            standins[spec.name] = by_family[spec.family]
    return standins


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory, model_standins) -> Sandbox:
    keep = tmp_path_factory.mktemp("docs-sandbox-states")
    _make_sandbox_files(keep / "fresh")
    return Sandbox(tmp_path_factory.mktemp("docs-sandbox") / "root", keep, model_standins)


@pytest.mark.parametrize("block", [_param(b) for b in BLOCKS])
def test_documented_commands_run(block: Block, sandbox: Sandbox, capsys, monkeypatch):
    skipped = [f"{c.text}: {c.skip_reason()}" for c in block.commands if c.skip_reason()]
    if len(skipped) == len(block.commands):
        pytest.skip(f"{block.id}: nothing to run: " + "; ".join(skipped))
    failures = sandbox.run(block, capsys, monkeypatch)
    assert not failures, "a documented command fails:\n" + "\n".join(failures)
