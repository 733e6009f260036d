"""--where on metadata and catalog attributes, applied inside the search; zero-shot tags."""

from __future__ import annotations

import os

import pytest

from visdex import open_index
from visdex.errors import BadQuery, UnsupportedModality
from visdex.filters import allowed_ids, compile_where

from clihelp import run_cli
from imagefactory import real_photos, write_photo, write_shots

SHOTS = {  # name: (photo, subfolder, EXIF date, camera, format)
    "cat2021": ("chelsea", "2021", "2021-07-04T10:00:00", ("Canon", "Canon EOS R5"), "JPEG"),
    "coffee2022": ("coffee", "2022", "2022-01-15T08:30:00", ("NIKON CORPORATION", "NIKON D750"), "JPEG"),
    "rocket2023": ("rocket", "2023/trip", "2023-05-20T18:00:00", ("Canon", "Canon EOS R5"), "JPEG"),
    "moon2023": ("moon", "2023", "2023-11-02T23:59:00", None, "PNG"),
    "coins": ("coins", "misc", None, None, "PNG"),
}


@pytest.fixture(scope="module")
def meta_index(tmp_path_factory):
    d = tmp_path_factory.mktemp("f")
    write_shots(d / "p", SHOTS)
    ix = open_index(d / "ix", model="lite0-minilm")
    ix.add([d / "p"])
    yield ix, d
    ix.close()


def _where(ix, expr) -> set[str]:
    rows = ix.db.files_by_ids(allowed_ids(ix.db, expr))
    return {os.path.basename(r.path).split(".")[0] for r in rows.values()}


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("format = png", {"moon2023", "coins"}),
        ("format != png", {"cat2021", "coffee2022", "rocket2023"}),
        ("taken >= 2023", {"rocket2023", "moon2023"}),
        ("taken = 2022-01", {"coffee2022"}),
        ("taken < 2022 or camera ~ '*nikon*'", {"cat2021", "coffee2022"}),
        ("camera = 'Canon EOS R5' and not taken >= 2023", {"cat2021"}),
        ("folder = 2023", {"moon2023"}),  # a bare folder name: folders of that name
        ("folder ~ '*/2023*'", {"rocket2023", "moon2023"}),
        ("name ~ 'c*'", {"cat2021", "coffee2022", "coins"}),
        ("width > 500", {"coffee2022", "rocket2023", "moon2023"}),
        ("size < 1KB", set()),
        ("format in (png, webp)", {"moon2023", "coins"}),
        ("(format = png or taken < 2022) and name != coins.png", {"moon2023", "cat2021"}),
    ],
)
def test_where_fields_and_operators(meta_index, expr, expected):
    ix, _ = meta_index
    assert _where(ix, expr) == expected


def test_absolute_folder_means_everything_below(meta_index):
    ix, d = meta_index
    assert _where(ix, f"folder = {d / 'p' / '2023'}") == {"rocket2023", "moon2023"}


def test_filter_gives_true_topk_among_matches(meta_index):
    ix, _ = meta_index
    # the cat is the best "kitten" match overall; filtered to PNGs the top-k must come from the PNGs only,
    # and with one match the result is that match even though it ranks low overall
    hits = ix.search("kitten", k=3, where="format = png")
    assert {os.path.basename(h.path).split(".")[0] for h in hits} == {"moon2023", "coins"}
    only = ix.search("kitten", k=5, where="name = coins.png")
    assert [os.path.basename(h.path) for h in only] == ["coins.png"]
    assert ix.search("kitten", k=5, where="taken > 2030") == []


@pytest.mark.parametrize("bad", ["foo = 1", "width >= abc", "width", "(width > 1", "width > 1 height < 2",
                                 "size > 5XB", "tag < 3", "format in png"])  # fmt: skip
def test_bad_filters_are_bad_queries(bad):
    with pytest.raises(BadQuery):
        compile_where(bad)


def test_values_are_parameters_not_sql(meta_index):
    ix, _ = meta_index
    sql, params = compile_where('name = "x\'); DROP TABLE files; --"')
    assert "DROP" not in sql and params == ["x'); DROP TABLE files; --"]
    assert _where(ix, 'name = "x\'); DROP TABLE files; --"') == set()
    assert ix.db.counts()["ok"] == len(SHOTS)


def test_tags_are_stored_and_filterable(meta_index, capsys):
    from visdex.tags import tag_index, tags_for

    ix, _ = meta_index
    report = tag_index(ix, ["cat", "coffee", "rocket", "moon"], top=1)
    assert report.images == len(SHOTS)
    # ConSE over ImageNet cannot name the moon (it goes to "rocket" or "cat"); the others are right
    assert "cat2021" in _where(ix, "tag = cat") and "cat2021" not in _where(ix, "tag != cat")
    assert _where(ix, "tag = coffee") == {"coffee2022"}
    assert _where(ix, "tag in (COFFEE, nothing)") == {"coffee2022"}  # one SQL IN, case as for =
    tags = tags_for(ix.db, [int(i) for i in allowed_ids(ix.db, "name = rocket2023.jpg")])
    ((label, score),) = next(iter(tags.values()))
    assert label == "rocket" and 0.5 < score <= 1.0
    # re-tagging with other labels keeps these; the same labels replace them
    tag_index(ix, ["indoor", "outdoor"], top=1)
    assert _where(ix, "tag = coffee") == {"coffee2022"}
    code, out, err = run_cli(capsys, "search", "anything", "--index", ix.path, "--where", "tag = coffee", "--json")
    assert code == 0 and len(out.splitlines()) == 1 and "coffee2022" in out


def test_tags_leave_with_their_file(tmp_path):
    d = tmp_path / "p"
    d.mkdir()
    photos = real_photos()
    for name in ("chelsea", "coffee"):
        write_photo(d, name, photos[name])
    from visdex.tags import tag_index

    with open_index(tmp_path / "ix", model="lite0-minilm") as ix:
        ix.add([d])
        tag_index(ix, ["cat", "coffee"], top=1)
        (d / "chelsea.jpg").unlink()
        ix.add([d])
        assert ix.db.conn.execute("SELECT COUNT(*) FROM tags").fetchone()[0] == 1


def test_tag_needs_a_text_model(tmp_path, folder, tiny_dinov2):
    from visdex.tags import tag_index

    with open_index(tmp_path / "ix", model=str(tiny_dinov2)) as ix:
        ix.add([folder])
        with pytest.raises(UnsupportedModality):
            tag_index(ix, ["a", "b"])


def test_catalog_attributes_filter(tmp_path):
    d = tmp_path / "shop"
    d.mkdir()
    photos = real_photos()
    lines = ["sku,image,title,color,price"]
    for i, (name, color, price) in enumerate([("chelsea", "orange", "12.5"), ("coffee", "red", "30"),
                                              ("rocket", "red", "8")]):  # fmt: skip
        write_photo(d, name, photos[name])
        lines.append(f"s{i},{name}.jpg,{name},{color},{price}")
    (d / "items.csv").write_text("\n".join(lines) + "\n")
    with open_index(tmp_path / "ix", model="lite0-minilm") as ix:
        ix.add_catalog(d / "items.csv")
        hits = ix.search("kitten", k=5, where="color = red and price < 20")
        assert [h.key for h in hits] == ["s2"]
        assert {h.key for h in ix.search("x", k=5, where="attr.color = RED")} == {"s1", "s2"}
        assert [h.key for h in ix.search("x", k=5, where="title ~ 'cof*'")] == ["s1"]


# -- hardening: limits, dates, home paths, templates -------------------------------------------------------------
@pytest.mark.parametrize(
    "bad, message",
    [
        ("(" * 3000 + "width > 1" + ")" * 3000, "nested too deeply"),  # was a RecursionError
        ("not " * 3000 + "width > 1", "nested too deeply"),
        ("taken >= notadate", "needs a date"),  # was accepted and matched nothing
        ("taken = 2023-13", "needs a date"),
        ("date < 'yesterday'", "needs a date"),
        ("name in (" + ",".join(f"x{i}" for i in range(10_001)) + ")", "more than 10,000 comparisons"),
    ],
)
def test_filters_past_the_limits_are_bad_queries(bad, message):
    with pytest.raises(BadQuery, match=message):
        compile_where(bad)


def test_long_in_lists_and_or_chains_run(meta_index):
    # SQLite refuses a flat chain of 999 ORs ("Expression tree is too large"): the SQL is grouped
    ix, _ = meta_index
    names = [f"x{i}.jpg" for i in range(998)] + ["coins.png"]
    assert _where(ix, f"name in ({', '.join(names)})") == {"coins"}
    assert _where(ix, " or ".join(f"name = {n}" for n in names)) == {"coins"}
    assert _where(ix, " and ".join(f"name != {n}" for n in names)) == {"cat2021", "coffee2022", "rocket2023",
                                                                        "moon2023"}  # fmt: skip
    assert _where(ix, "folder in (" + ", ".join(f"/nowhere/{i}" for i in range(999)) + ", misc)") == {"coins"}
    assert _where(ix, "width in (" + ", ".join(str(i) for i in range(999)) + ")") == _where(ix, "width < 999")
    assert _where(ix, "size in (1, 2KB, 3MB) or name in (COINS.PNG)") == {"coins"}


def test_dates_with_a_time_compare_as_stored(meta_index):
    ix, _ = meta_index
    assert _where(ix, "taken >= '2023-05-20 17:00'") == {"rocket2023", "moon2023"}
    assert _where(ix, "taken < 2023-05-20T18:30 and taken > 2023") == {"rocket2023"}


def test_home_folder_in_where(meta_index, monkeypatch):
    ix, d = meta_index
    monkeypatch.setenv("HOME", str(d))
    assert _where(ix, "folder = ~/p/2023") == {"rocket2023", "moon2023"}  # "~" was read as the glob operator
    assert _where(ix, "folder in (~/p/misc, ~/p/2021)") == {"coins", "cat2021"}
    assert _where(ix, "path = ~/p/misc/coins.png") == {"coins"}
    assert _where(ix, "folder ~ '*/2023'") == {"moon2023"}  # the glob operator still works


def test_tag_template_must_have_one_placeholder(meta_index, capsys):
    from visdex.tags import prompts_for

    assert prompts_for(["beach"], "a photo of {}") == ["a photo of beach"]
    assert prompts_for(["beach"], "a photo of") == ["a photo of beach"]
    assert prompts_for(["beach"], "{{literal}} {}") == ["{literal} beach"]
    for bad in ("{}{}{}", "{0} and {1}", "{name}", "a { b", "{:d}"):
        with pytest.raises(BadQuery, match="^template "):
            prompts_for(["beach"], bad)
    ix, _ = meta_index
    code, _, err = run_cli(capsys, "tag", "--labels", "a,b", "--template", "{}{}{}", "--index", ix.path)
    assert code == 2 and "exactly one {}" in err and "Traceback" not in err
