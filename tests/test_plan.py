from __future__ import annotations

from matteforge.steps.plan import InputFile, plan_build, stale_rows


def _row(uri: str, status: str = "ok", config: str = "c1", model: str = "m1",
         size: int | None = 10) -> dict:
    return {"source_uri": uri, "status": status, "config_hash": config, "model_sha256": model,
            "source_bytes": size}


INPUTS = [InputFile(f"/in/{n}", f"/in/{n}", 10) for n in ("a", "b", "c", "d")]


def test_incremental_skips_done_rows_and_keeps_failures():
    existing = {"/in/a": _row("/in/a"), "/in/b": _row("/in/b", "failed"),
                "/in/c": _row("/in/c", "rejected")}
    plan = plan_build(INPUTS, existing, "incremental", "c1", "m1")
    assert [f.uri for f in plan.todo] == ["/in/d"] and plan.skipped == 3


def test_retry_failed_redoes_only_failures_and_new_files():
    existing = {"/in/a": _row("/in/a"), "/in/b": _row("/in/b", "failed")}
    plan = plan_build(INPUTS, existing, "retry-failed", "c1", "m1")
    assert [f.uri for f in plan.todo] == ["/in/b", "/in/c", "/in/d"]


def test_changed_config_model_or_size_and_overwrite_redo_the_row():
    for row in (_row("/in/a", config="c0"), _row("/in/a", model="m0"), _row("/in/a", size=11)):
        assert [f.uri for f in plan_build(INPUTS[:1], {"/in/a": row}, "incremental", "c1",
                                          "m1").todo] == ["/in/a"]
    plan = plan_build(INPUTS, {"/in/a": _row("/in/a")}, "overwrite", "c1", "m1")
    assert len(plan.todo) == 4 and plan.skipped == 0


def test_stale_rows_prefer_fresh_then_current_then_not_failed():
    rows = {"shard-1": [_row("/in/a", "failed"), _row("/in/b")],
            "shard-2": [_row("/in/a", "ok")]}
    assert stale_rows(rows, "c1", "m1") == {("shard-1", "/in/a")}
    assert stale_rows(rows, "c1", "m1", fresh={"shard-1"}) == {("shard-2", "/in/a")}
    old_config = {"shard-1": [_row("/in/a", config="c0")], "shard-0": [_row("/in/a", "failed")]}
    assert stale_rows(old_config, "c1", "m1") == {("shard-1", "/in/a")}
    assert stale_rows({"shard-1": [_row("/in/a")], "shard-2": [_row("/in/b")]}, "c1", "m1") == set()
