"""Composed queries, crops and score cutoffs, through the parser and on real photos."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from visdex import open_index
from visdex.errors import BadQuery
from visdex.models.base import l2_normalize
from visdex.query import Crop, parse_query

from clihelp import run_cli
from imagefactory import real_photos, write_photo


def _terms(q):
    return [(t.kind, t.value, t.weight) for t in parse_query(q).terms]


def test_parser_forms(tmp_path):
    img = write_photo(tmp_path, "a", real_photos()["coffee"][:64, :64])
    assert _terms("red dress") == [("text", "red dress", 1.0)]
    assert _terms(["breakfast", "drink"]) == [("text", "breakfast drink", 1.0)]
    assert _terms('"2:red dress" + "at night" - people') == [
        ("text", "red dress", 2.0), ("text", "at night", 1.0), ("text", "people", -1.0)]  # fmt: skip
    assert _terms([str(img), "+", "in blue"]) == [("image", str(img), 1.0), ("text", "in blue", 1.0)]
    assert _terms(f"0.5:{img} - people") == [("image", str(img), 0.5), ("text", "people", -1.0)]
    assert _terms("beach -people") == [("text", "beach", 1.0), ("text", "people", -1.0)]
    assert _terms("- people + beach") == [("text", "people", -1.0), ("text", "beach", 1.0)]
    assert _terms(["t-shirt"]) == [("text", "t-shirt", 1.0)]
    assert _terms("photo: sunset") == [("text", "photo: sunset", 1.0)]  # a colon in a text is not a weight


@pytest.mark.parametrize(
    "bad, message",
    [
        ("beach +", "ends with an operator"),
        ("+ beach", "no term before"),
        ("beach + + sea", "no term before"),
        ("- people", "positive term"),
        ("0:beach", "weight must be > 0"),
        ("photos/missing.jpg", "no such image file"),
        ("", "empty"),
        ('"unclosed', "cannot parse"),
    ],
)
def test_malformed_queries_name_the_problem(bad, message):
    with pytest.raises(BadQuery, match=message):
        parse_query(bad)


def test_crop_parsing_and_bounds():
    assert Crop.parse("0.5,0,0.5,1") == Crop(0.5, 0, 0.5, 1, relative=True)
    assert Crop.parse("10,20,30,40").box(100, 100) == (10, 20, 40, 60)
    assert Crop.parse("0.5,0,0.5,1").box(200, 100) == (100, 0, 200, 100)
    for bad in ("1,2,3", "a,b,c,d", "0,0,0,10", "-1,0,5,5"):
        with pytest.raises(BadQuery):
            Crop.parse(bad)
    with pytest.raises(BadQuery, match="outside"):
        Crop.parse("90,90,50,50").box(100, 100)
    with pytest.raises(BadQuery, match="image term"):
        parse_query("just text", crop="0,0,0.5,0.5")


@pytest.fixture(scope="module")
def photo_index(tmp_path_factory):
    d = tmp_path_factory.mktemp("q")
    (d / "photos").mkdir()
    for name, arr in real_photos().items():
        write_photo(d / "photos", name, arr)
    ix = open_index(d / "ix", model="lite0-minilm")
    ix.add([d / "photos"])
    yield ix, d
    ix.close()


def _names(hits):
    return [os.path.basename(h.path).split(".")[0] for h in hits]


def test_composed_query_is_the_normalised_weighted_sum(photo_index):
    ix, d = photo_index
    cat = str(d / "photos" / "chelsea.jpg")
    want = l2_normalize(ix.query_vector(cat) + 2 * ix.query_vector("rocket") - ix.query_vector("grass"))[0]
    np.testing.assert_allclose(ix.query_vector(f'{cat} + "2:rocket" - grass'), want, atol=1e-5)


def test_adding_and_subtracting_terms_moves_results(photo_index):
    ix, d = photo_index
    cat = str(d / "photos" / "chelsea.jpg")
    plain = _names(ix.search(cat, k=10))
    plus = _names(ix.search([cat, "+", "rocket"], k=10))
    assert plain[0] == "chelsea" and plus.index("rocket") < plain.index("rocket")
    assert plus.index("rocket") == 1
    minus = ix.search("kitten - cat", k=10)
    assert _names(ix.search("kitten", k=1)) == ["chelsea"] and _names(minus)[0] != "chelsea"


def test_crop_finds_the_photo_in_a_composite(photo_index, tmp_path):
    ix, _ = photo_index
    photos = real_photos()
    left = np.asarray(Image.fromarray(photos["rocket"]).resize((300, 300)))
    right = np.asarray(Image.fromarray(photos["chelsea"]).resize((300, 300)))
    both = write_photo(tmp_path, "both", np.concatenate([left, right], axis=1))
    assert _names(ix.search(str(both), k=1, crop="0.5,0,0.5,1")) == ["chelsea"]
    assert _names(ix.search(str(both), k=1, crop="0,0,300,300")) == ["rocket"]


def test_min_score_and_within(photo_index):
    ix, _ = photo_index
    hits = ix.search("kitten", k=10)
    top = hits[0].score
    assert all(h.score >= 0.3 for h in ix.search("kitten", k=10, min_score=0.3))
    within = ix.search("kitten", k=10, within=0.05)
    assert within and all(h.score >= top - 0.05 for h in within)
    assert len(within) < len(hits)


def test_cli_composed_query_and_negative_word(capsys, photo_index):
    ix, d = photo_index
    code, out, err = run_cli(capsys, "search", d / "photos" / "chelsea.jpg", "+", "rocket", "--index", ix.path,
                             "-n", "2")  # fmt: skip
    assert code == 0, err
    assert "chelsea" in out.splitlines()[0] and "rocket" in out.splitlines()[1]
    code, out, err = run_cli(capsys, "search", "kitten", "-cat", "--index", ix.path, "-n", "1")
    assert code == 0 and "chelsea" not in out
    code, _, err = run_cli(capsys, "search", "beach", "+", "--index", ix.path)
    assert code == 2 and "operator" in err


# -- hardening: quotes, image paths inside one argument, limits --------------------------------------------------
@pytest.mark.parametrize(
    "query, terms",
    [
        ("a dog's toy", [("text", "a dog's toy", 1.0)]),
        ("what's this?", [("text", "what's this?", 1.0)]),
        ("rock'n'roll", [("text", "rock'n'roll", 1.0)]),  # shlex made this "rocknroll"
        ("'90s music", [("text", "'90s music", 1.0)]),  # a quote never closed is text
        ("'red dress' - people", [("text", "red dress", 1.0), ("text", "people", -1.0)]),
        ('"-5 degrees" + snow', [("text", "-5 degrees", 1.0), ("text", "snow", 1.0)]),  # quoted: not an operator
        ('a 5" screen', [("text", 'a 5" screen', 1.0)]),  # a quote inside a word is text
    ],
)
def test_quotes_group_a_term_and_a_lone_apostrophe_is_text(query, terms):
    assert _terms(query) == terms


def test_shlex_quoted_paths_stay_one_term(tmp_path):
    # the HTTP layer builds composed queries with shlex.quote; paths with spaces and apostrophes must survive
    import shlex

    folder = tmp_path / "Bob's trip"
    folder.mkdir()
    img = write_photo(folder, "beach day", real_photos()["coffee"][:64, :64])
    assert _terms(f"{shlex.quote(f'0.5:{img}')} + at night") == [("image", str(img), 0.5), ("text", "at night", 1.0)]


def test_one_argument_ending_in_an_image_path(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    write_photo(tmp_path / "photos", "chelsea", real_photos()["chelsea"][:64, :64])
    monkeypatch.chdir(tmp_path)
    assert _terms(["rocket + photos/chelsea.jpg"]) == [("text", "rocket", 1.0), ("image", "photos/chelsea.jpg", 1.0)]
    assert _terms("photos/chelsea.jpg - cat") == [("image", "photos/chelsea.jpg", 1.0), ("text", "cat", -1.0)]
    with pytest.raises(BadQuery, match="no such image file: photos/missing.jpg"):
        parse_query("rocket + photos/missing.jpg")


@pytest.mark.parametrize("bad", ["1e400:cat", "nan:cat", "inf:cat", "-inf:cat", "2000:cat"])
def test_weights_must_be_finite_and_sane(bad):
    with pytest.raises(BadQuery, match="weight"):
        parse_query(bad)


@pytest.mark.parametrize("bad", ["nan,0,1,1", "inf,0,1,1", "0,0,1e308,1e308", "0,0,-inf,1"])
def test_crop_must_be_finite(bad):
    with pytest.raises(BadQuery, match="crop"):
        Crop.parse(bad)


def test_cli_hardened_search_arguments(capsys, photo_index, monkeypatch):
    ix, d = photo_index
    monkeypatch.chdir(d)
    code, out, err = run_cli(capsys, "search", "kitten + photos/chelsea.jpg", "--index", ix.path, "-n", "1")
    assert code == 0, err
    assert "chelsea" in out
    code, out, err = run_cli(capsys, "search", "what's this?", "--index", ix.path, "-n", "1")
    assert code == 0, err  # was exit 2: "No closing quotation"
    for args in (["photos/chelsea.jpg", "--crop", "nan,0,1,1"], ["photos/chelsea.jpg", "--crop", "inf,0,1,1"],
                 ["1e400:cat"], ["cat", "-n", "1000000000000"], ["cat", "-n", "100000000"]):  # fmt: skip
        code, out, err = run_cli(capsys, "search", *args, "--index", ix.path)
        assert code == 2 and "Traceback" not in err and err.strip(), (args, err)
    with pytest.raises(BadQuery, match="at most 10,000 results"):
        ix.search("cat", k=10**12)
