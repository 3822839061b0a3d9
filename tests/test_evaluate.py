"""The evaluate flow: per-sample metrics against ground truth, matching, tables, comparison."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import loopback
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import shared_data
from PIL import Image

from matteforge import metrics
from matteforge.dataset import evaluate as ev
from matteforge.dataset import manifest
from matteforge.dataset.storage import locate
from matteforge.flows.evaluate import EvaluationError, ground_truth_files, score_dataset


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _soft_disk(h: int = 60, w: int = 80, r: float = 18.0) -> np.ndarray:
    """A disk with a 4 px linear ramp: 255 inside, 0 outside, soft in between."""
    yy, xx = np.mgrid[:h, :w]
    d = np.hypot(yy - h / 2, xx - w / 2)
    return np.clip((r + 4 - d) / 4 * 255, 0, 255).round().astype(np.uint8)


def test_band_is_everything_within_the_radius_of_soft_pixels():
    gt = _soft_disk()
    soft = (gt > 0) & (gt < 255)
    band = ev.ground_truth_band(gt, radius=3)
    from scipy import ndimage

    distance = ndimage.distance_transform_edt(~soft)
    # hard edges: none here (the ramp separates 0 from 255), so the rule is the soft distance
    assert np.array_equal(band, distance <= 3)
    assert band[soft].all() and not band[30, 40] and not band[0, 0]
    assert np.array_equal(ev.ground_truth_band(gt, radius=0), soft)


def test_band_of_a_hard_edged_matte_straddles_the_edge():
    gt = np.zeros((20, 30), np.uint8)
    gt[:, 15:] = 255
    band = ev.ground_truth_band(gt, radius=2)
    # the edge pixels are columns 14 (0 next to 255) and 15; ±2 px around them
    assert np.array_equal(np.flatnonzero(band[7]), np.arange(12, 18))
    assert band.all(axis=0)[12:18].all()
    assert not ev.ground_truth_band(np.full((5, 5), 255, np.uint8)).any()  # nothing to blur


def test_perfect_prediction_scores_zero_everywhere():
    gt = _soft_disk()
    band = ev.ground_truth_band(gt)
    found = ev.evaluate_alpha(gt.copy(), gt, band, trimap_unknown=band)
    assert set(found) == {f"{m}{r}" for m in ev.METRICS for r in ev.REGIONS}
    assert all(v == 0.0 for v in found.values()), found


def test_known_sad_and_mse_of_a_wrong_block():
    gt = np.zeros((40, 50), np.uint8)
    pred = gt.copy()
    pred[10:20, 10:20] = 255  # 100 pixels fully wrong
    band = np.zeros_like(gt, dtype=bool)
    band[10:20, 10:15] = True  # 50 of them in the region
    found = ev.evaluate_alpha(pred, gt, band)
    assert found["sad"] == pytest.approx(0.1)  # 100 / 1000, the MATLAB scale
    assert found["mse"] == pytest.approx(100 / (40 * 50))
    assert found["sad_band"] == pytest.approx(0.05) and found["mse_band"] == pytest.approx(1.0)
    assert found["sad_trimap"] is None and found["conn_trimap"] is None
    assert found["grad"] > 0 and found["conn"] > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_region_sums_equal_the_matlab_faithful_metrics(seed):
    rng = np.random.default_rng(seed)
    gt = _soft_disk(50, 70)
    pred = np.clip(gt.astype(int) + rng.integers(-60, 60, gt.shape), 0, 255).astype(np.uint8)
    pred[5:15, 5:12] = 200  # an island the connectivity measure penalises
    maps = ev.error_maps(pred, gt)
    for region in (None, rng.random(gt.shape) < 0.3, np.zeros(gt.shape, bool)):
        got = ev.region_metrics(maps, region)
        assert got["sad"] == pytest.approx(metrics.sad(pred, gt, region), rel=1e-12)
        assert got["mse"] == pytest.approx(metrics.mse(pred, gt, region), rel=1e-12)
        assert got["grad"] == pytest.approx(metrics.gradient_error(pred, gt, region), rel=1e-12)
        assert got["conn"] == pytest.approx(metrics.connectivity_error(pred, gt, region),
                                            rel=1e-12)


def test_score_sample_reads_files_and_refuses_another_size():
    gt = _soft_disk()
    trimap = np.where(ev.ground_truth_band(gt, 2), 128, np.where(gt > 127, 255, 0))
    row = ev.score_sample(_png(gt), _png(gt), None, _png(trimap.astype(np.uint8)))
    assert row["alpha_sad"] == 0.0 and row["alpha_sad_trimap"] == 0.0
    assert row["model_sad"] is None  # no model alpha in older datasets
    assert row["trimap_unknown_pixels"] == int((trimap == 128).sum())
    assert row["band_pixels"] == int(ev.ground_truth_band(gt).sum())
    with pytest.raises(ev.SizeMismatch, match="alpha is 80x59 but the ground truth is 80x60"):
        ev.score_sample(_png(gt), _png(gt[:59]))


def test_mattes_decode_from_grey_16_bit_and_transparency():
    gt = _soft_disk()
    assert np.array_equal(ev.decode_matte(_png(gt)), gt)
    assert np.array_equal(ev.decode_matte(_png(np.dstack([gt] * 3))), gt)
    rgba = np.dstack([np.zeros_like(gt)] * 3 + [gt])  # the matte in the alpha channel
    assert np.array_equal(ev.decode_matte(_png(rgba)), gt)
    buf = io.BytesIO()
    Image.fromarray(gt.astype(np.uint16) * 257).save(buf, "PNG")
    assert np.array_equal(ev.decode_matte(buf.getvalue()), gt)


def test_matching_by_stem_counts_missing_ambiguous_and_unmatched():
    rows = [{"source_uri": "s3://in/a/x.jpg", "content_sha256": "1"},
            {"source_uri": "/in/y.png", "content_sha256": "2"},
            {"source_uri": "/in/one/z.png", "content_sha256": "3"},
            {"source_uri": "/in/two/z.png", "content_sha256": "4"},
            {"source_uri": "/in/nogt.png", "content_sha256": "5"}]
    pairs, no_gt, unmatched = ev.match_ground_truth(
        rows, ["/gt/x.png", "/gt/y.png", "/gt/y.jpg", "/gt/z.png", "/gt/extra.png"])
    got = {r["source_uri"]: (path, why) for r, path, why in pairs}
    assert got["s3://in/a/x.jpg"] == ("/gt/x.png", "")
    assert got["/in/y.png"][0] is None and "2 ground-truth files" in got["/in/y.png"][1]
    assert got["/in/one/z.png"][0] is None and "2 inputs" in got["/in/one/z.png"][1]
    assert no_gt == 1 and unmatched == ["/gt/extra.png"]


def _result(stem: str, sha: str, sad: float, outcome: str = ev.SCORED) -> dict[str, Any]:
    row = ev.result_row({"source_uri": f"/in/{stem}.png", "content_sha256": sha,
                         "sample_id": sha, "status": "ok", "model_id": "m"}, "gt")
    row.update(outcome=outcome, alpha_sad=sad)
    return row


def test_comparison_pairs_by_content_hash_then_stem_and_reports_b_minus_a():
    a = [_result("p", "h1", 2.0), _result("q", "h2", 1.0), _result("r", "h3", 1.0, ev.ERROR)]
    # q was re-encoded in b (new hash): paired by stem; p renamed p2 but same bytes: by hash
    b = [_result("p2", "h1", 1.5), _result("q", "h9", 3.0), _result("r", "h3", 0.0)]
    pairs, summary = ev.compare(a, b)
    assert [(p["stem"], p["alpha_sad_delta"]) for p in pairs] == [("p", -0.5), ("q", 2.0)]
    s = summary["metrics"]["alpha_sad"]
    assert summary["pairs"] == 2 and s["count"] == 2
    assert s["mean_a"] == 1.5 and s["mean_b"] == 2.25 and s["mean_delta"] == 0.75
    assert (s["b_better"], s["a_better"]) == (1, 1)
    assert summary["metrics"]["model_sad"]["count"] == 0


def _dataset(root: Path, gt_dir: Path) -> dict[str, np.ndarray]:
    """A hand-made dataset (manifest + files) beside ground truth for six inputs."""
    gts = {"perfect": _soft_disk(), "off": _soft_disk(r=14), "small": _soft_disk(),
           "rejected": _soft_disk(), "dup": _soft_disk(), "lowq": _soft_disk()}
    (gt_dir / "alpha").mkdir(parents=True)
    (gt_dir / "image").mkdir()
    for stem, gt in gts.items():
        (gt_dir / "alpha" / f"{stem}.png").write_bytes(_png(gt))
        (gt_dir / "image" / f"{stem}.png").write_bytes(_png(np.dstack([gt] * 3)))  # ignored
    for folder in ("alpha", "alpha_model", "trimaps"):
        (root / folder).mkdir(parents=True)
    files = {"perfect": gts["perfect"], "off": _soft_disk(), "small": gts["small"][:50],
             "lowq": _soft_disk(r=20)}
    rows = []
    for i, (stem, alpha) in enumerate(files.items()):
        sid = f"{i:020d}"
        (root / "alpha" / f"{sid}.png").write_bytes(_png(alpha))
        (root / "alpha_model" / f"{sid}.png").write_bytes(_png(np.where(alpha > 127, 255, 0)
                                                               .astype(np.uint8)))
        (root / "trimaps" / f"{sid}.png").write_bytes(
            _png(np.where((alpha > 0) & (alpha < 255), 128, alpha).astype(np.uint8)))
        rows.append({"sample_id": sid, "source_uri": f"/in/{stem}.jpg", "status": "ok",
                     "content_sha256": sid, "width": alpha.shape[1], "height": alpha.shape[0],
                     "alpha_uri": f"alpha/{sid}.png", "alpha_model_uri": f"alpha_model/{sid}.png",
                     "trimap_uri": f"trimaps/{sid}.png", "model_id": "hand"})
    # the quality rule rejected it but kept its files
    rows[3].update(status="rejected", reason="low_quality:edge_support")
    rows += [{"sample_id": "r" * 20, "source_uri": "/in/rejected.jpg", "status": "rejected",
              "reason": "no_person"},
             {"sample_id": rows[0]["sample_id"], "source_uri": "/in/copies/dup.jpg",
              "status": "duplicate", "reason": "duplicate", "content_sha256": rows[0]["sample_id"]},
             {"sample_id": "n" * 20, "source_uri": "/in/no_truth.jpg", "status": "ok"}]
    manifest.write_table(locate(str(root)), "samples", manifest.shard_name("x"), rows)
    return gts


def test_score_dataset_scores_carries_status_and_turns_mismatches_into_error_rows(tmp_path):
    gts = _dataset(tmp_path / "ds", tmp_path / "gt")
    results, extra = score_dataset(str(tmp_path / "ds"), str(tmp_path / "gt"))
    by = {r["stem"]: r for r in results}
    assert extra["counts"] == {"samples": 7, "ground_truth_files": 6, "no_ground_truth": 1,
                               "ground_truth_unmatched": 0}
    perfect = by["perfect"]
    assert perfect["outcome"] == ev.SCORED
    assert all(perfect[f"alpha_{m}{r}"] == 0.0 for m in ev.METRICS for r in ev.REGIONS)
    assert perfect["model_sad"] > 0  # the hard model map is not the soft truth
    off = by["off"]  # alpha of a disk 4 px larger than the truth
    assert off["alpha_sad"] == pytest.approx(
        np.abs(_soft_disk() / 255 - gts["off"] / 255).sum() / 1000)
    assert off["alpha_sad_band"] <= off["alpha_sad"]
    assert by["small"]["outcome"] == ev.ERROR and by["small"]["alpha_sad"] is None
    assert by["small"]["error"].startswith("size_mismatch: alpha is 80x50")
    assert (by["rejected"]["outcome"], by["rejected"]["status"]) == (ev.NOT_SCORED, "rejected")
    assert by["dup"]["outcome"] == ev.SCORED and by["dup"]["status"] == "duplicate"
    assert by["dup"]["alpha_sad"] == 0.0  # scored with the files of the row that holds it
    lowq = by["lowq"]
    assert (lowq["outcome"], lowq["status"]) == (ev.SCORED, "rejected") and lowq["alpha_sad"] > 0
    summary = ev.summarize(results, extra["counts"])
    c = summary["counts"]
    assert (c["scored"], c["scored_accepted"], c["scored_rejected"], c["error"]) == (4, 3, 1, 1)
    assert summary["not_scored_by_status"] == {"rejected": 1}
    assert summary["scored_by_status"] == {"duplicate": 1, "ok": 2, "rejected": 1}
    # shipped samples and quality-rejected ones are summarised apart
    assert summary["metrics"]["alpha_sad"]["count"] == 3
    assert summary["metrics"]["alpha_sad"]["median"] == 0.0
    assert summary["metrics_rejected"]["alpha_sad"]["mean"] == lowq["alpha_sad"]


def test_ground_truth_is_the_alpha_folder_or_the_files_themselves(tmp_path):
    _dataset(tmp_path / "ds", tmp_path / "gt")
    via_root = ground_truth_files(locate(str(tmp_path / "gt")))
    assert via_root == ground_truth_files(locate(str(tmp_path / "gt" / "alpha")))
    assert len(via_root) == 6 and all("/alpha/" in p for p in via_root)
    remote = locate("memory://evaluate-gt")
    for path in via_root[:2]:
        remote.fs.pipe_file(f"/evaluate-gt/{Path(path).name}", Path(path).read_bytes())
    results, extra = score_dataset(str(tmp_path / "ds"), "memory://evaluate-gt")
    assert [r["ground_truth_uri"] for r in results] == [
        f"memory:///evaluate-gt/{Path(p).name}" for p in via_root[:2]]
    assert extra["counts"]["no_ground_truth"] == 5
    with pytest.raises(EvaluationError, match="does not exist"):
        ground_truth_files(locate(str(tmp_path / "nowhere")))
    with pytest.raises(EvaluationError, match="no matteforge dataset"):
        score_dataset(str(tmp_path / "gt"), str(tmp_path / "gt"))


def test_cli_refuses_bad_inputs_in_one_line_before_starting_prefect(tmp_path, capsys):
    from matteforge.cli import EXIT_BAD_INPUT, main

    _dataset(tmp_path / "ds", tmp_path / "gt")
    cases = [
        (["--dataset", str(tmp_path / "gt"), "--ground-truth", str(tmp_path / "gt")],
         "holds no matteforge dataset"),
        (["--dataset", str(tmp_path / "ds"), "--ground-truth", str(tmp_path / "none")],
         "does not exist"),
        (["--dataset", str(tmp_path / "ds"), "--ground-truth", str(tmp_path / "gt"),
          "--name", "../up"], "name '../up'"),
        (["--dataset", "a", "--dataset", "b", "--compare", "c", "--ground-truth", "g"],
         "at most two datasets"),
    ]
    for args, message in cases:
        assert main(["evaluate", *args]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip()
        assert err.startswith("matteforge: error:") and message in err and "\n" not in err


# --- end to end: real builds of P3M portraits, the CLI, Prefect's local mode ---------------

def _build(out: Path, gt_root: Path, stems: list[str], model: str) -> None:
    """A real small dataset of P3M portraits: one shard, run in-process without Prefect."""
    from matteforge.config import load_config
    from matteforge.steps.shard import BackgroundRef, ShardJob, run_shard
    from matteforge.tasks.ingest import content_hash

    bg = shared_data("backgrounds", "mate_Aqua.jpg")
    cfg = load_config("demo", **{"segment.model": model, "composite.per_foreground_train": 1,
                                 "composite.per_foreground_test": 1})
    run_shard(ShardJob("s", [str(gt_root / "image" / f"{s}.png") for s in stems],
                       cfg.model_dump(mode="json"), str(gt_root / "image"), str(bg.parent),
                       str(out),
                       [BackgroundRef(content_hash(bg.read_bytes())[:20], str(bg), "bg.jpg")]))


def _cli(home: Path, api_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = loopback.prefect_env(home, api_url)
    return subprocess.run([sys.executable, "-m", "matteforge.cli", "evaluate", *args],
                          capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_evaluate_and_compare_two_builds_of_p3m_portraits(tmp_path, prefect_server):
    gt_root = shared_data("p3m_figure_gt")
    stems = ["p3m_fig_a1", "p3m_fig_a3", "p3m_fig_b2"]
    selfie, rvm, perfect = tmp_path / "selfie", tmp_path / "rvm", tmp_path / "perfect"
    _build(selfie, gt_root, stems, "mediapipe-selfie")
    _build(rvm, gt_root, stems, "rvm")
    # a copy of the selfie build whose alphas are the ground truth itself
    shutil.copytree(selfie, perfect)
    for row in manifest.read_table(locate(str(perfect)), "samples").to_pylist():
        stem = Path(row["source_uri"]).stem
        shutil.copyfile(gt_root / "alpha" / f"{stem}.png", perfect / row["alpha_uri"])

    proc = _cli(tmp_path / "home", prefect_server[0], "--dataset", str(selfie), "--compare",
                str(rvm), "--ground-truth", str(gt_root))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "alpha gt band [b-a]" in proc.stdout and "3 scored" in proc.stdout
    assert not (rvm / "evaluation").exists()  # the compared dataset is read, never written
    for name, model in (("gt", "mediapipe-selfie"), ("gt-b", "rvm")):
        build = selfie
        table = pq.read_table(build / "evaluation" / f"{name}.parquet").to_pylist()
        assert sorted(r["stem"] for r in table) == stems
        assert all(r["outcome"] == "scored" and r["alpha_sad"] > 0 and r["model_sad"] > 0
                   and r["alpha_sad_trimap"] > 0 for r in table)
        summary = json.loads((build / "evaluation" / f"{name}.json").read_text())
        assert summary["counts"]["scored"] == 3
        assert summary["counts"]["ground_truth_unmatched"] == 7  # the P3M figure has 10
        assert summary["model_ids"][0].startswith(model.split("-")[0])
        assert summary["band"]["radius_px"] == ev.GT_BAND_RADIUS
    compared = pq.read_table(selfie / "evaluation" / "gt-compare.parquet").to_pylist()
    assert sorted(p["stem"] for p in compared) == stems
    assert all(p["alpha_sad_delta"] == pytest.approx(p["alpha_sad_b"] - p["alpha_sad_a"])
               for p in compared)
    cmp_summary = json.loads((selfie / "evaluation" / "gt-compare.json").read_text())
    assert cmp_summary["pairs"] == 3 and cmp_summary["metrics"]["alpha_sad_band"]["count"] == 3

    out = tmp_path / "elsewhere"
    proc = _cli(tmp_path / "home", prefect_server[0], "--dataset", str(perfect), "--ground-truth",
                str(gt_root / "alpha"), "--name", "copy", "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = pq.read_table(out / "copy.parquet").to_pylist()
    assert len(table) == 3
    assert all(r[f"alpha_{m}{g}"] == 0.0 for r in table for m in ev.METRICS for g in ev.REGIONS)
    assert all(r["model_sad"] > 0 for r in table)  # the model map is not the truth
    assert not (perfect / "evaluation").exists()
