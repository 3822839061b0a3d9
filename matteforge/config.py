"""The one validated place for build configuration.

A build is described by a YAML file (``configs/*.yaml``) validated by :class:`BuildConfig`;
CLI flags override single fields.  The config hash recorded in every manifest row is computed
from the fields that change what a sample's outputs look like, so two builds with the same hash
are interchangeable per sample.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import posixpath
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from fsspec.utils import get_protocol
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from matteforge.dataset.retry import RetryPolicy


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IngestConfig(_Section):
    max_pixels: int = Field(40_000_000, gt=0, description="Larger decoded images are rejected.")
    max_bytes: int = Field(200 * 1024 * 1024, gt=0, description="Larger files are rejected.")
    min_side: int = Field(32, ge=1, description="Images with a shorter side are rejected.")
    extensions: list[str] = Field(
        default_factory=lambda: [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"],
        description="Files listed from an input folder; other files are ignored.",
    )
    follow_links_outside: bool = Field(
        False, description="Read symbolic links that lead out of the input or backgrounds "
        "folder; off: such a link is a row rejected/outside_input and is never opened.")


class UserModelConfig(_Section):
    """Your own segmentation model (torch.export, TorchScript or ONNX) from any fsspec URI.

    Frozen (hashable) so a loaded model can be cached per process like the built-in ones.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["torch-export", "torchscript", "onnx"]
    uri: str = Field(description="Model file: a path or fsspec URI (s3://, gs://, https://, ...).")
    sha256: str | None = Field(None, description="Refuse the file unless its sha256 is this.")
    license: str = Field("unknown (user model)", description="Recorded in dataset.json.")
    input_size: tuple[int, int] = Field((512, 512), description="Model input (height, width).")
    resize: Literal["stretch", "letterbox"] = "stretch"
    mean: tuple[float, float, float] = Field((0.0, 0.0, 0.0), description="On RGB / 255.")
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: Literal["nchw", "nhwc"] = Field("nchw", description="Of the input and the output.")
    output: Literal["probability", "sigmoid", "softmax", "argmax"] = Field(
        "probability", description="How to read the person map out of the output."
    )
    channel: int = Field(0, ge=0, description="Output channel, or class for argmax (VOC: 15).")
    output_key: str | int = Field(0, description="Which output: index, or name/dict key.")


EncoderSide = Annotated[int, Field(ge=64, le=2048)]


# The default recipe's models (docs/quality.md): rvm (GPL-3.0) and MODNet (Apache-2.0) at a
# 384 px short side, where its maps on the dev composites had 24 % less SAD than at its
# reference 512 (12.9 vs 16.8 at ~1 MP, 1.64 vs 2.25 at native size).
DEFAULT_MODELS = ("rvm", "modnet@384")


class SegmentConfig(_Section):
    model: str | UserModelConfig | list[str | UserModelConfig] = Field(
        default_factory=lambda: list(DEFAULT_MODELS),
        description="rvm (GPL-3.0), modnet, meet, mediapipe-selfie (Apache-2.0), your model, "
        "or a list of them: an ensemble (mean map, agreement checks; docs/quality.md). "
        "name@size sets a model's input size (modnet@384: short side; rvm@384,640).",
    )
    weights_path: str | None = Field(None, description="Own copy of the weights (sha256-checked).")
    presence_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Presence cut; None = model default."
    )
    # rvm's recipe (docs/segment.md): None = the measured defaults, [384, 640] and 2 passes.
    size: EncoderSide | list[EncoderSide] | None = Field(
        None, description="rvm: long side(s) its encoder sees, maps averaged; None = [384, 640]."
    )
    passes: int | None = Field(
        None, ge=1, le=16, description="rvm: times the photo is fed (1 = fastest); None = 2."
    )
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="Run the models on: 'auto' (a GPU when torch sees one, else the CPU), "
        "'cpu' or 'cuda[:N]' (an error without a GPU).")
    batch_size: int | None = Field(
        None, ge=1, le=64, description="Portraits a shard sends through the models at once "
        "(one forward per model and input size; at most 32 MP per batch): None = 8 when the "
        "models run on a GPU, 1 on the CPU.")

    def model_names(self) -> list[str | UserModelConfig]:
        """The models behind the mask: one, or an ensemble's members in order."""
        return list(self.model) if isinstance(self.model, list) else [self.model]

    @model_validator(mode="after")
    def _rvm_settings_need_rvm(self) -> SegmentConfig:
        names = self.model_names()
        from matteforge.models.identity import check_model_name

        for name in names:
            if isinstance(name, str):
                check_model_name(name)
        if isinstance(self.model, list):
            if len(names) < 2:
                raise ValueError("segment.model as a list needs two or more models")
            if len({repr(n) for n in names}) != len(names):
                raise ValueError("segment.model lists a model twice")
            if self.weights_path is not None:
                raise ValueError("segment.weights_path names one model's weights; an ensemble "
                                 "reads each model's from its MATTEFORGE_*_WEIGHTS variable")
        if "rvm" not in names and (self.size is not None or self.passes is not None):
            raise ValueError(
                f"segment.size and segment.passes apply to the rvm model only, not {self.model!r}"
            )
        return self


class TrimapConfig(_Section):
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Probability that counts as person.")
    kernel_shape: Literal["ellipse", "rect", "cross"] = "ellipse"
    width: int | None = Field(
        None, ge=1, description="Band half-width in px; None = scaled."
    )
    width_fraction: float = Field(0.01, gt=0.0, lt=0.5, description="Of the longer image side.")
    min_width: int = Field(3, ge=1)
    sure_margin: float = Field(
        0.05, ge=0.0, lt=0.5, description="Band pixels every model puts within this of 0 or 1 "
        "are known (tasks/trimap.settle_confident); 0 = the whole band is unknown.")


class AlphaConfig(_Section):
    n_neighbors: int = Field(10, ge=2, le=64)
    spatial_weight: float = Field(1.0, ge=0.0)
    constraint_weight: float | None = Field(
        None, gt=0.0, description="λ on known band pixels; None = eliminate them exactly (λ→∞)."
    )
    # The default recipe (measured on the dev composites, docs/quality.md): the prior weighted
    # per pixel by the models' confidence, plus the closed-form Laplacian at 100x KNN's weight.
    # Together with trimap.sure_margin they took the final alpha's SAD in the unknown band from
    # 0.94x to 0.80x the models' mean map at ~1 MP (0.92x to 0.70x at native size).
    prior_weight: float = Field(0.3, ge=0.0, description="Pull towards the mask probability.")
    prior_confidence: bool = Field(
        True, description="Scale the pull per pixel by the models' confidence (2p - 1)^2.")
    cf_weight: float = Field(
        100.0, ge=0.0, description="Closed-form (Levin) Laplacian added to KNN's; 0 = KNN only.")
    tol: float = Field(1e-6, gt=0.0)
    max_iter: int = Field(2000, ge=1)
    search_eps: float = Field(
        1.0, ge=0.0, description="Approximate neighbour search (0 = exact); see tasks/alpha/."
    )
    device: str | None = Field(
        "auto",
        description="Solve the alpha and estimate the foreground on: 'auto' (a GPU when torch "
        "sees one, else the CPU: AMG and pymatting), 'cuda' (torch Jacobi CG and torch's "
        "multi-level foreground; error without a GPU), 'cpu' (those torch paths on the CPU), or "
        "null (always the CPU libraries).",
    )


class CompositeConfig(_Section):
    per_foreground_train: int = Field(100, ge=0)
    per_foreground_test: int = Field(20, ge=0)
    test_fraction: float = Field(0.1, ge=0.0, le=1.0, description="Test share.")
    near_duplicate_bits: int | None = Field(
        10, ge=0, le=32, description="Photos whose perceptual hashes differ in at most this "
        "many of 64 bits are one group and share a split (frames of one clip); measured: no "
        "distinct pair of the dev photos within 16 bits (docs/inputs.md). None = only "
        "identical bytes.")
    mode: Literal["exact", "float"] = Field(
        "exact", description="exact = Adobe's 8-bit truncation; float = rounded."
    )
    format: Literal["png", "jpg"] = "png"
    jpeg_quality: int = Field(95, ge=1, le=100)
    copy_backgrounds: bool = Field(True, description="Copy used backgrounds into <out>/bg/.")
    store: bool = Field(
        True, description="Write each composite's file into merged/. False (lazy composites): "
        "the composites table still lists every composite with its recipe (fg, alpha, bg, "
        "effects), no merged file is written, MattingDataset(composite='stored') makes each "
        "one on read, pixel for pixel the file it would have been, and `matteforge "
        "materialize OUT` writes the files when they are wanted. Keep backgrounds readable "
        "(copy_backgrounds, the default) so the dataset can remake them.")
    effects: dict[str, float] = Field(
        default_factory=dict,
        description="Effect name → probability per composite (bokeh, motion_blur, zoom_blur, "
        "mosaic, retouch, tone; tasks/effects.py); empty = plain Composition-1K composites.",
    )

    @model_validator(mode="after")
    def _known_effects(self) -> CompositeConfig:
        from matteforge.tasks.effects import check_probabilities

        check_probabilities(self.effects)
        return self


class QualityConfig(_Section):
    """The acceptance rule: a sample whose figure passes a limit is ``rejected`` with reason
    ``low_quality:<figure>`` (its files are kept for review; it gets no composites).

    Figures are described in ``tasks/quality.py``; None switches a limit off.  The defaults were
    chosen on real portraits with good and deliberately broken masks (``benchmarks/quality.py``,
    docs/quality.md): no good mask is rejected.
    """

    max_model_disagreement: float | None = Field(
        0.35, ge=0.0, description="Ensembles: share of the person area where the models differ "
        "by > 0.5. Good composites <= 0.31, one model broken 0.18-1.0 (docs/quality.md).")
    min_edge_support: float | None = Field(
        1.55, ge=0.0, description="Good mattes 1.65-11.6 (busy backgrounds lowest), broken "
        "masks the agreement check lets through <= 1.50 (docs/quality.md).")
    max_mask_alpha_disagreement: float | None = Field(
        0.08, ge=0.0, le=1.0, description="Good 0.004-0.021, confetti masks >= 0.12.")
    max_fg_components: int | None = Field(
        8, ge=1, description="Person regions; good portraits 1-2; room for group photos.")
    max_unknown_fraction: float | None = Field(
        0.4, gt=0.0, le=1.0, description="Good 0.04-0.15; a shattered mask's band 0.12-0.52.")
    max_alpha_residual: float | None = Field(
        1e-3, gt=0.0, description="Relative residual the solver stopped at (not converged).")
    max_composite_residual: float | None = Field(
        None, ge=0.0, le=1.0, description="Off: it did not separate good from broken masks.")

    def limits(self) -> dict[str, tuple[str, float]]:
        """``figure → ("max" | "min", bound)`` for the limits that are on, in checking order."""
        out: dict[str, tuple[str, float]] = {}
        for name, value in self.model_dump().items():
            if value is not None:
                kind, _, figure = name.partition("_")
                out[figure] = (kind, value)
        return out


class RunConfig(_Section):
    mode: Literal["incremental", "overwrite", "retry-failed"] = Field(
        "incremental", description="Skip finished inputs; redo all; or redo failed ones too."
    )
    shard_size: int = Field(64, ge=1, description="Images per Prefect task.")
    dask_address: str | None = Field(None, description="Existing scheduler; None = LocalCluster.")
    n_workers: int | None = Field(None, ge=1, description="LocalCluster workers; None = CPU count.")
    threads_per_worker: int = Field(1, ge=1)
    torch_threads: int = Field(1, ge=1, description="torch/BLAS threads inside each worker.")
    heap_reuse: bool = Field(
        True, description="In a Dask worker, let the models reuse heap memory on portraits up to "
        "8 MP (steps/worker_env.py): about 2x faster models, but a worker that also meets 12 MP "
        "photos peaks ~0.1-0.2 GiB higher (2.06-2.17 against 1.95 GiB measured). False keeps "
        "Dask's memory settings throughout.")
    cluster_class: str | None = Field(
        None, description="Dask cluster class started per build, e.g. "
        "dask_kubernetes.operator.KubeCluster; None = LocalCluster (ignored with dask_address)."
    )
    cluster_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Arguments for cluster_class (image, n_workers, ...)."
    )
    adapt_kwargs: dict[str, Any] | None = Field(
        None, description="cluster.adapt() bounds, e.g. {minimum: 1, maximum: 20}; None = fixed."
    )
    io_attempts: int = Field(
        3, ge=1, description="Tries per storage read/write on transient errors (1 = no retry)."
    )
    io_backoff: float = Field(0.5, ge=0.0, description="Seconds before the 2nd try; doubles.")
    io_backoff_max: float = Field(8.0, ge=0.0, description="Longest wait between two tries.")
    shard_retries: int = Field(
        2, ge=0, description="Prefect reruns of a shard task that failed (e.g. its manifest "
        "write kept failing); a rerun rewrites the same files."
    )

    def io_retry(self) -> RetryPolicy:
        """The retry policy every storage location of the build is opened with."""
        return RetryPolicy(self.io_attempts, self.io_backoff, self.io_backoff_max)


LOCATIONS = ("input", "backgrounds", "output")


class StorageConfig(_Section):
    """fsspec ``storage_options`` per location: endpoint, region, anonymous access, profile ...

    ``options`` applies to every location that is not a local path; ``input``, ``backgrounds``
    and ``output`` add to it (and win) for that one location.  None of it is ever recorded:
    :class:`BuildConfig` leaves this section out of every dump, and flows pass it sealed.
    """

    options: dict[str, Any] = Field(
        default_factory=dict, description="For every remote location, e.g. {endpoint_url: ...}."
    )
    input: dict[str, Any] = Field(default_factory=dict, description="Only for the input.")
    backgrounds: dict[str, Any] = Field(default_factory=dict, description="Only for backgrounds.")
    output: dict[str, Any] = Field(default_factory=dict, description="Only for the output.")

    def for_location(self, name: str, uri: str | None) -> dict[str, Any]:
        """The options to open location ``name`` (``input``, ...) at ``uri`` with."""
        local = uri is None or get_protocol(uri) in ("file", "local")
        return merge_options({} if local else self.options, getattr(self, name))

    def with_overrides(self, extra: dict[str, Any]) -> StorageConfig:
        return StorageConfig.model_validate(merge_options(self.model_dump(), extra))


def merge_options(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``, nested mappings merged (``client_kwargs`` keeps other keys)."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_options(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_storage_option(text: str) -> dict[str, Any]:
    """``[input:|backgrounds:|output:]KEY=VALUE`` → StorageConfig data (dotted KEY nests).

    VALUE stays a string (a secret like ``0123`` must not become a number) except ``true`` and
    ``false``; options of other types belong in the config file.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"storage option {text.split('=')[0]!r}: expected KEY=VALUE")
    section, colon, key = key.strip().rpartition(":")
    if colon and section not in LOCATIONS:
        raise ValueError(f"storage option prefix {section!r}: use one of {', '.join(LOCATIONS)}")
    value: Any = {"true": True, "false": False}.get(raw.lower(), raw)
    *parents, leaf = key.split(".")
    data: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        data = {part: data}
    return {section or "options": data}


def seal_storage(data: dict[str, Any]) -> SecretStr:
    """Storage options as a flow parameter: Prefect records a SecretStr as ``**********``."""
    return SecretStr(json.dumps(data, sort_keys=True))


def unseal_storage(sealed: SecretStr | None) -> dict[str, Any]:
    return json.loads(sealed.get_secret_value()) if sealed is not None else {}


class BuildConfig(_Section):
    """Everything a build needs besides where its data lives."""

    name: str = "matteforge-dataset"
    seed: int = 0
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    trimap: TrimapConfig = Field(default_factory=TrimapConfig)
    alpha: AlphaConfig = Field(default_factory=AlphaConfig)
    composite: CompositeConfig = Field(default_factory=CompositeConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    input: str | None = Field(None, description="Folder or fsspec URI of portraits.")
    backgrounds: str | None = Field(None, description="Folder or fsspec URI of backgrounds.")
    output: str | None = Field(None, description="Dataset root (folder or fsspec URI).")
    storage: StorageConfig = Field(
        default_factory=StorageConfig, exclude=True, repr=False,
        description="fsspec storage options; left out of dumps, so never in dataset.json.",
    )

    @model_validator(mode="after")
    def _extensions_lowercase(self) -> BuildConfig:
        self.ingest.extensions = [
            e.lower() if e.startswith(".") else f".{e.lower()}" for e in self.ingest.extensions
        ]
        return self

    def config_hash(self) -> str:
        """Hash of the settings that shape per-sample outputs (not paths, not run settings)."""
        relevant = self.model_dump(
            include={"seed", "ingest", "segment", "trimap", "alpha", "composite", "quality"}
        )
        relevant["segment"].pop("weights_path", None)
        # The device changes a model's map by float round-off, not what the dataset is.
        relevant["segment"].pop("device", None)
        relevant["segment"].pop("batch_size", None)  # the same maps, batched or not
        # Which links are read decides which inputs are processed, not how: planning redoes
        # the outside_input rows when it is switched on (matteforge/steps/plan.py).
        relevant["ingest"].pop("follow_links_outside", None)
        # Where the solve runs changes alphas by < 1e-3, below 8-bit output, and the foreground
        # by 0.12 levels on average where α > 0.1 (tasks/foreground_torch.py): not a new dataset.
        relevant["alpha"].pop("device", None)
        # Stored or made on read, a composite is the same pixels (tests/test_lazy_composites.py):
        # not a new dataset; `matteforge materialize` turns one into the other in place.
        relevant["composite"].pop("store", None)
        blob = json.dumps(relevant, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _where(uri: str) -> tuple[str, str]:
    """(filesystem, normalised path) of a location, to compare locations without opening them.

    A chained URL (``simplecache::file:///data``, ``filecache::s3://b/x``, ``dir::...``) reads
    and writes its innermost location, the last link of the chain, so that is what is compared.
    Local paths are resolved (``file://``, ``local://``, ``~``, ``..``, symbolic links).
    """
    inner = uri.rsplit("::", 1)[-1]
    protocol = get_protocol(inner)
    if protocol in ("file", "local"):
        local = inner.split("://", 1)[1] if "://" in inner else inner
        return "file", os.path.realpath(os.path.expanduser(local))
    rest = inner.split("://", 1)[1].rsplit("@", 1)[-1] if "://" in inner else inner
    return {"s3a": "s3", "gcs": "gs", "abfs": "az"}.get(protocol, protocol), \
        posixpath.normpath("/" + rest)


def check_locations(cfg: BuildConfig) -> None:
    """Refuse an output that is, or is inside, or holds, the input or the backgrounds.

    Such a build would list its own outputs as inputs on the next run, or write into the user's
    source folder; ``overwrite`` mode would delete part of it.
    """
    if cfg.output is None:
        return
    out_fs, out = _where(cfg.output)
    for name in ("input", "backgrounds"):
        uri = getattr(cfg, name)
        if uri is None:
            continue
        fs, path = _where(uri)
        if fs != out_fs:
            continue
        if path == out:
            how = "is"
        elif out.startswith(path.rstrip("/") + "/"):
            how = "is inside"
        elif path.startswith(out.rstrip("/") + "/"):
            how = "contains"
        else:
            continue
        raise ValueError(f"the output {how} the {name} ({path}): choose an output folder "
                         f"apart from the {name}, so a build never reads or replaces its sources")


def check_sources(cfg: BuildConfig) -> None:
    """Refuse a build with no output, or with a local input or backgrounds that is not there.

    Remote locations are listed by the build itself; these are the mistakes that can be named
    before a Prefect server or a Dask cluster starts.
    """
    if not cfg.output:
        raise ValueError("no output: give --output (or `output:` in the config)")
    for name in ("input", "backgrounds"):
        uri = getattr(cfg, name)
        if uri is None:
            continue
        fs, path = _where(uri)
        if fs == "file" and not os.path.exists(path):
            raise ValueError(f"--{name} {uri}: no such file or folder")


def explain_errors(errors: list[dict[str, Any]]) -> str:
    """pydantic's validation errors as one line; an unknown key gets a "did you mean"."""
    parts = []
    for error in errors:
        where = ".".join(map(str, error["loc"]))
        if error["type"] == "extra_forbidden":
            near = difflib.get_close_matches(str(error["loc"][-1]),
                                             _known_keys(error["loc"][:-1]), n=1, cutoff=0.6)
            hint = f" (did you mean {'.'.join([*map(str, error['loc'][:-1]), near[0]])}?)" \
                if near else ""
            parts.append(f"{where}: unknown key{hint}")
        else:
            parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _known_keys(path: tuple[Any, ...]) -> list[str]:
    """The keys a config section accepts, found by walking BuildConfig's fields."""
    model: Any = BuildConfig
    for part in path:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(
                field.annotation, BaseModel):
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def packaged_config_path(name: str) -> Path:
    """Path of a config shipped in ``matteforge.configs`` (e.g. ``demo``)."""
    return Path(str(resources.files("matteforge.configs").joinpath(f"{name}.yaml")))


def load_config(
    path: str | Path | dict[str, Any] | None = None, **overrides: Any
) -> BuildConfig:
    """Load and validate a config; ``overrides`` are top-level or dotted keys.

    ``path`` is a YAML file, a packaged config name without suffix (``demo``), or an already
    parsed mapping.  Overrides whose value is None are ignored so CLI flags that were not given
    leave the file's value alone.
    """
    data: dict[str, Any] = {}
    if isinstance(path, dict):
        data = copy.deepcopy(path)
    elif path is not None:
        p = Path(path)
        # a file named so wins; else a packaged name (a folder "demo" where the user stands,
        # e.g. the demo's own data, does not hide the packaged "demo")
        packaged = packaged_config_path(str(path))
        if not p.suffix and not p.is_file() and packaged.is_file():
            p = packaged
        if p.is_dir():
            raise ValueError(f"config {path} is a folder, not a YAML file")
        if not p.exists():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:  # e.g. a !!python/object tag: safe_load builds no objects
            problem = " ".join(str(exc).split())
            raise ValueError(f"config {path} is not plain YAML data: {problem}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"config {path} must be a mapping, got {type(loaded).__name__}")
        data = loaded or {}
    for key, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return BuildConfig.model_validate(data)
