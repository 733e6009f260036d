"""The Python API raises typed errors for ids and queries no index can answer."""

from __future__ import annotations

import pytest

from visdex import open_index
from visdex.errors import NotFound


@pytest.mark.parametrize("item_id", [2**63, 99999999999999999999999, -(2**64)])
def test_similar_with_an_id_no_index_can_hold_is_not_found(tmp_path, folder, tiny_clip, item_id):
    with open_index(tmp_path / "ix", model=str(tiny_clip)) as ix:
        ix.add([folder])
        with pytest.raises(NotFound, match="no item with id"):
            ix.similar(item_id)
