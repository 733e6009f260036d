"""The ``/api/trash`` routes: review duplicates and act on them. Preview a move (what would go where, how many
files and bytes), apply it (one batch, undoable), list the batches, undo one. See :mod:`visdex.trash`.

A move or an undo writes to the index: it takes the index's writer lock on a connection of its own for the
length of the call (the served index stays a reader, so ``visdex index`` can run between calls) and answers
409 while another process, or another move of this server, writes. The served index picks up the change by
its generation, as it does after a ``visdex index``.
"""

from __future__ import annotations

import os
import threading
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, Field, model_validator

from .. import trash
from ..errors import BadQuery, IndexBusy
from .routes import require_token, served

router = APIRouter(prefix="/api/trash", dependencies=[Depends(require_token)], tags=["trash"])
_writing = threading.Lock()  # one move or undo at a time in this process (the writer lock is per process)

MAX_IDS = 100_000


class GroupChoice(BaseModel):
    keeper_id: int = Field(description="The file to keep.")
    move_ids: list[int] = Field(min_length=1, max_length=MAX_IDS, description="Files of its group to move.")


class MoveRequest(BaseModel):
    groups: list[GroupChoice] | None = Field(
        None,
        max_length=MAX_IDS,
        description="Keeper and files to move, per group; or `suggested` for every group's suggested keeper.",
    )
    suggested: bool = Field(False, description="Keep each duplicate group's suggested keeper and move its copies.")
    threshold: float | None = Field(
        None, gt=0, le=1, allow_inf_nan=False, description="With `suggested`: as /api/duplicates' `threshold`."
    )
    exact_only: bool = Field(False, description="With `suggested`: only byte-identical files.")
    trash: str | None = Field(None, max_length=4096, description="An absolute folder to move the files to "
                              "(default: .visdex-trash in each file's indexed folder).")  # fmt: skip

    @model_validator(mode="after")
    def _one_source(self):
        if (self.groups is None) == (not self.suggested):
            raise ValueError("give either groups or suggested: true")
        if self.trash is not None and not os.path.isabs(self.trash):
            raise ValueError("trash must be an absolute folder path")
        return self


class MoveItem(BaseModel):
    id: int
    path: str
    bytes: int
    keeper_id: int
    keeper_path: str
    kind: str | None = Field(None, description="exact, copy, near...: what the file is of its keeper, when known.")


class Skipped(BaseModel):
    path: str
    reason: str


class TrashPreview(BaseModel):
    files: int = Field(description="How many files would move.")
    bytes: int = Field(description="Their size in all.")
    trash: str = Field(description="Where they would go.")
    moves: list[MoveItem]
    skipped: list[Skipped] = Field(description="Group members left where they are, with why.")


class Moved(BaseModel):
    path: str
    to: str


class MoveResult(BaseModel):
    batch: str = Field(description="The batch id, for undo.")
    files: int
    bytes: int
    copied: int = Field(description="Of them, moved by copy + verify + delete (another file system).")
    moved: list[Moved]
    failed: list[Skipped] = Field(description="Files that could not move: they stay in place and indexed.")


class TrashBatch(BaseModel):
    id: str
    created_at: float = Field(description="Unix time.")
    state: str = Field(description="moved, undone, partly undone or interrupted.")
    files: int = Field(description="Files of the batch in the trash now.")
    bytes: int
    restored: int
    trash: list[str] = Field(description="The batch's folders.")


class TrashBatches(BaseModel):
    count: int
    batches: list[TrashBatch]


class UndoRequest(BaseModel):
    batch: str | None = Field(None, max_length=100, description="A batch id or its start; default: the latest.")


class UndoResult(BaseModel):
    batch: str
    files: int = Field(description="Files moved back.")
    bytes: int
    restored: list[str] = Field(description="Back in the index with their vectors.")
    reindex: list[str] = Field(description="Changed in the trash: back on disk, embedded by the next index run.")
    conflicts: list[Skipped] = Field(description="Left in the trash (e.g. another file now has the path).")


def _suggested(request: Request, body: MoveRequest) -> list | None:
    """The duplicate groups for ``suggested``, from the cache /api/duplicates fills (computed outside the lock
    that searches take)."""
    if not body.suggested:
        return None
    from .background import Pending, dupes_job

    key, job = dupes_job(body.threshold, body.exact_only)
    groups = served(request).analysis(key, job, wait=120)  # the background's groups (usually ready by now)
    if isinstance(groups, Pending):
        raise IndexBusy(f"the duplicates are still being computed ({groups.progress:.0%}); try again shortly")
    return groups


def _plan(ix, body: MoveRequest, groups: list | None) -> trash.MovePlan:
    if groups is None:
        return trash.plan_moves(ix, [(g.keeper_id, g.move_ids) for g in body.groups or []])
    return trash.plan_from_groups(ix, groups)


def _where(ix, body: MoveRequest) -> str:
    return trash.check_trash(ix, body.trash) if body.trash else f"{trash.TRASH_DIR_NAME} in the indexed folder"


def _preview_json(plan: trash.MovePlan, where: str) -> dict:
    return {**plan.to_dict(), "trash": where}


def _writer(request: Request):
    """A connection that writes (the index's writer lock held until it closes): 409 while anyone else writes."""
    from ..api import open_index

    if not _writing.acquire(blocking=False):
        raise IndexBusy("index busy: another move or undo is under way; try again when it is done")
    try:
        ix = open_index(served(request).path, create=False)
        try:
            ix.db.hold_writer()
        except BaseException:
            ix.close()
            raise
    except BaseException:
        _writing.release()
        raise
    return ix


def _done(ix) -> None:
    try:
        ix.close()
    finally:
        _writing.release()


@router.post("/preview", summary="What a move would do: files, bytes, each file and its keeper")
def preview(request: Request, body: Annotated[MoveRequest, Body()]) -> TrashPreview:
    """Nothing moves. `groups` names each keeper and the files to move; `suggested` takes every duplicate group
    with its suggested keeper (only copies are offered: look-alikes are left for a person, in `skipped`)."""
    groups = _suggested(request, body)
    return served(request).call(lambda ix: _preview_json(_plan(ix, body, groups), _where(ix, body)))


# the routes return plain dicts; response_model checks them and writes the OpenAPI schema
@router.post(
    "/apply", summary="Move files to the trash (one batch, undoable); the index follows", response_model=MoveResult
)
def apply(request: Request, body: Annotated[MoveRequest, Body()]) -> dict:
    """The same body as `/preview`. Files leave the index as they move; `/undo` brings them back. 409 while
    another process writes to the index."""
    groups = _suggested(request, body)
    ix = _writer(request)
    try:
        plan = _plan(ix, body, groups)
        if not plan.moves:
            raise BadQuery("nothing to move: " + (plan.skipped[0][1] if plan.skipped else "no files given"),
                           field="groups")  # fmt: skip
        return trash.move_to_trash(ix, plan, body.trash).to_dict()
    finally:
        _done(ix)


@router.get("/batches", summary="The batches of moved files, newest first", response_model=TrashBatches)
def batches(request: Request) -> dict:
    # the served index is a reader: an interrupted batch is shown as such and finished by the next move or undo
    found = served(request).call(lambda ix: trash.list_batches(ix, finish_interrupted=False))
    return {"count": len(found), "batches": [b.to_dict() for b in found]}


@router.post("/undo", summary="Move a batch's files back, and back into the index", response_model=UndoResult)
def undo(request: Request, body: Annotated[UndoRequest | None, Body()] = None) -> dict:
    """Default: the latest batch not undone. 404 when there is none; 409 while another process writes."""
    ix = _writer(request)
    try:
        return trash.undo(ix, body.batch if body else None).to_dict()
    finally:
        _done(ix)
