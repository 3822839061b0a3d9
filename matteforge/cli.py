"""``matteforge``: the build, the demo, and each stage alone on single files.

Stage commands exist for debugging and benchmarking one image at a time; they call the same pure
functions the build uses.  Any failure ends in one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np

if TYPE_CHECKING:
    from pydantic import BaseModel

# Exit codes (docs/inputs.md, "Reliability"): 0 done; 1 verify found problems, or a bug;
# 2 a mistake in the command or config; 3 the build finished but some inputs failed for the
# machine's reasons (rerun to retry them); 4 another build holds the output's lock;
# 130/143 interrupted by SIGINT/SIGTERM.
EXIT_BAD_INPUT = 2
EXIT_MACHINE_FAILURES = 3
EXIT_LOCKED = 4


class CliError(Exception):
    """A problem the user can fix; printed as one line."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.code = code


class DatasetInvalid(Exception):
    """``verify`` found problems (already listed on stdout)."""


def _read_rgb(path: str) -> np.ndarray:
    """A file from anywhere as HxWx3 RGB, read as the build reads its inputs (EXIF, 16-bit,
    palette, any format Pillow knows; reasons like ``not_an_image``), not with the codec's
    ``decode``, which is only for files the dataset wrote."""
    from matteforge.tasks.ingest import decode_image

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from exc
    result = decode_image(data)
    if result.image is None:
        raise CliError(f"{path}: {result.reason}: {result.detail}")
    return result.image


def _read_gray(path: str) -> np.ndarray:
    """Mask, trimap or alpha file as HxW uint8 (RGB files are reduced to their first channel)."""
    image = _read_rgb(path)
    return np.ascontiguousarray(image[:, :, 0])


def _write(path: str, image: np.ndarray) -> None:
    from matteforge.dataset.codec import encode

    fmt = "jpg" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "png"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(encode(image, fmt))


def _same_size(name: str, array: np.ndarray, ref: np.ndarray, ref_name: str) -> None:
    if array.shape[:2] != ref.shape[:2]:
        raise CliError(f"{name} is {array.shape[1]}x{array.shape[0]} but {ref_name} is "
                       f"{ref.shape[1]}x{ref.shape[0]}")


def cmd_mask(args: argparse.Namespace) -> None:
    from matteforge.dataset.codec import to_uint8
    from matteforge.tasks.segment import is_person, load_segmenter
    from matteforge.tasks.trimap import binarize

    image = _read_rgb(args.image)
    segmenter = load_segmenter(args.model, weights_path=args.weights, passes=args.passes)
    result = segmenter.predict(image)
    _write(args.out, binarize(result.probability, args.threshold))
    if args.prob:
        _write(args.prob, to_uint8(result.probability))
    verdict = "person" if is_person(result) else "no person"
    print(f"{args.out}: presence {result.presence:.3f} ({verdict})")


def cmd_trimap(args: argparse.Namespace) -> None:
    from matteforge.tasks.trimap import band_width, make_trimap

    mask = _read_gray(args.mask)
    half = band_width(*mask.shape, fixed=args.width, fraction=args.width_fraction)
    _write(args.out, make_trimap(mask, threshold=args.threshold, kernel_shape=args.shape,
                                 half_width=half))


def cmd_alpha(args: argparse.Namespace) -> None:
    from matteforge.dataset.codec import to_uint8
    from matteforge.tasks.alpha import AlphaOptions, knn_alpha_with_info

    image, tri = _read_rgb(args.image), _read_gray(args.trimap)
    _same_size("trimap", tri, image, "image")
    if np.isin(tri, (0, 255)).all():
        print(f"matteforge: warning: {args.trimap} has no unknown (grey) pixels, so the alpha is "
              "that file itself; did you pass a mask? make a trimap first: matteforge trimap "
              "MASK --out TRIMAP.png", file=sys.stderr)
    options = AlphaOptions(n_neighbors=args.neighbors, device=args.device)
    alpha, info = knn_alpha_with_info(image, tri, options)
    _write(args.out, to_uint8(alpha))
    print(f"{args.out}: {info.n_unknown} unknown px, {info.iterations} iterations, "
          f"{info.seconds_graph + info.seconds_solve:.2f} s")


def cmd_sample(args: argparse.Namespace) -> None:
    """One portrait through the build's own recipe (``tasks/recipe.py``): every file, figures."""
    from matteforge.config import load_config
    from matteforge.dataset.codec import to_uint8
    from matteforge.tasks.recipe import make_sample
    from matteforge.tasks.segment import is_person, segmenter_for

    cfg = load_config(args.config)
    image = _read_rgb(args.image)
    result = segmenter_for(cfg.segment).predict(image)
    if not is_person(result):
        print(f"{args.image}: no person (presence {result.presence:.3f}); the build would "
              "reject it as no_person")
    sample = make_sample(image, result.model_maps(), cfg)
    out = Path(args.out)
    for name, array in (("alpha_model", to_uint8(sample.probability)), ("trimap", sample.trimap),
                        ("alpha", sample.alpha), ("fg", sample.foreground)):
        _write(str(out / f"{name}.png"), array)
    figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in sample.row.items() if v not in (None, ""))
    verdict = "ok" if sample.verdict is None else f"rejected: {sample.verdict[1]}"
    print(f"{out}: {verdict}; {figures}")


def cmd_foreground(args: argparse.Namespace) -> None:
    from matteforge.tasks.foreground import estimate_foreground

    image, alpha = _read_rgb(args.image), _read_gray(args.alpha)
    _same_size("alpha", alpha, image, "image")
    _write(args.out, estimate_foreground(image, alpha))


def cmd_composite(args: argparse.Namespace) -> None:
    from matteforge.tasks.composite import composite, fit_background

    fg, alpha, bg = _read_rgb(args.fg), _read_gray(args.alpha), _read_rgb(args.bg)
    _same_size("alpha", alpha, fg, "foreground")
    fitted = fit_background(bg, *alpha.shape)
    _write(args.out, composite(fg, alpha, fitted, args.mode))


def _run_build(**params: Any) -> dict[str, Any]:
    # Dask's per-connection INFO lines would bury the progress lines; workers inherit this.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    # Ctrl-C or SIGTERM: stop in order, one line, exit 130/143 (SystemExit, which main() passes
    # on); and no server or worker outlives this process, even one killed with SIGKILL.
    from matteforge.interrupt import stoppable

    with stoppable():
        from matteforge.flows.build import build_dataset
        from matteforge.prefect_env import prefect_api

        with prefect_api():
            return build_dataset(**params)


def _run_reprocess(**params: Any) -> dict[str, Any]:
    """The reprocess flow, run like :func:`_run_build` (temporary server, signals, children)."""
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    from matteforge.interrupt import stoppable

    with stoppable():
        from matteforge.flows.reprocess import reprocess_dataset
        from matteforge.prefect_env import prefect_api

        with prefect_api():
            return reprocess_dataset(**params)


def _print_summary(summary: dict[str, Any], output: str) -> None:
    print(f"\ndataset written to {output}")
    print(json.dumps(summary, indent=2))


def _storage_flags(args: argparse.Namespace) -> dict[str, Any]:
    """``--storage-option`` and ``--endpoint-url`` as data shaped like the config's storage."""
    from matteforge.config import merge_options, parse_storage_option

    data: dict[str, Any] = {}
    items = list(args.storage_option or [])
    if args.endpoint_url:
        items.insert(0, f"endpoint_url={args.endpoint_url}")
    for item in items:
        try:
            data = merge_options(data, parse_storage_option(item))
        except ValueError as exc:
            raise CliError(str(exc)) from exc
    return data


def _license_notice(cfg: Any) -> None:
    """Say once, on stderr, when the recipe's masks come from GPL-3.0 weights (rvm)."""
    from matteforge.models.identity import split_model_name

    names = [split_model_name(n)[0] for n in cfg.segment.model_names() if isinstance(n, str)]
    if "rvm" in names:
        print("matteforge: this recipe uses rvm, whose weights are treated as GPL-3.0 "
              "(recorded in dataset.json); --config permissive uses Apache-2.0/MIT weights only",
              file=sys.stderr)


def _check_build_config(args: argparse.Namespace) -> Any:
    """Refuse a config the flow would refuse, before a Prefect server and workers start."""
    from pydantic import ValidationError

    from matteforge.config import check_locations, check_sources, explain_errors, load_config

    try:
        cfg = load_config(args.config, input=args.input, output=args.output,
                          backgrounds=args.backgrounds, **{"run.mode": args.mode},
                          **_ingest_flags(args))
        check_locations(cfg)
        check_sources(cfg)
    except ValidationError as exc:
        raise CliError("config: " + explain_errors(exc.errors())) from exc
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CliError(first) from exc
    _license_notice(cfg)
    return cfg


def _build_storage(cfg: Any, args: argparse.Namespace) -> Any:
    """The config's storage options with the command line's over them, as the flow merges
    them (``storage.with_overrides``)."""
    from matteforge.config import StorageConfig

    return cfg.storage.with_overrides(StorageConfig.model_validate(
        _storage_flags(args)).model_dump())


def _probe_lock(cfg: Any, args: argparse.Namespace) -> None:
    """Refuse at once, before a server starts, when a live build holds the output's lock.

    The flow takes the lock for real; this is only the early, friendly answer.
    """
    from matteforge.dataset.lock import OutputLocked, output_lock
    from matteforge.dataset.storage import locate

    storage = _build_storage(cfg, args)
    try:
        with output_lock(locate(cfg.output, storage.for_location("output", cfg.output))):
            pass
    except OutputLocked as exc:
        raise CliError(str(exc), EXIT_LOCKED) from None
    except Exception:  # e.g. no credentials yet: the build itself reports what is wrong
        return


def _ingest_flags(args: argparse.Namespace) -> dict[str, Any]:
    follow = getattr(args, "follow_links_outside", False)
    return {"ingest.follow_links_outside": True} if follow else {}


def build_params(args: argparse.Namespace) -> dict[str, Any]:
    """The build flow's parameters; credentials (options, ``user:pw@`` in URIs) go sealed."""
    from matteforge.config import seal_storage
    from matteforge.dataset.storage import redact_uri

    storage = _storage_flags(args)
    given = {"input": args.input, "backgrounds": args.backgrounds, "output": args.output}
    hidden = {k: v for k, v in given.items() if v and redact_uri(v) != v}
    params = {**{k: v for k, v in given.items() if k not in hidden}, "config": args.config,
              "dask_address": args.dask_address, "n_workers": args.workers,
              "shard_size": args.shard_size, "mode": args.mode,
              "storage_options": seal_storage(storage) if storage else None,
              "follow_links_outside": True if args.follow_links_outside else None,
              "limit": args.limit, "allow_empty": args.allow_empty}
    return {**params, "locations": seal_storage(hidden) if hidden else None}


def _locked_build(**params: Any) -> dict[str, Any]:
    """:func:`_run_build`, with another build's lock on the output as one line, exit 4."""
    from matteforge.dataset.lock import OutputLocked

    try:
        return _run_build(**params)
    except OutputLocked as exc:
        raise CliError(str(exc), EXIT_LOCKED) from None


def _check_machine_failures(summary: dict[str, Any]) -> None:
    """Exit 3 with one line when inputs failed for the machine's reasons, not their own."""
    failed = summary.get("machine_failures") or {}
    if not failed.get("inputs"):
        return
    parts = [f"{reason} {n}" for reason, n in sorted(failed.get("by_reason", {}).items())]
    if shards := failed.get("shards_failed"):
        lost = sum(s["inputs"] for s in shards)
        parts.append(f"{len(shards)} shard(s) of {lost} input(s) lost ({shards[0]['error']})")
    raise CliError(f"{failed['inputs']} input(s) failed for reasons of the machine, not the "
                   f"input: {'; '.join(parts)}; run the same command again to redo them",
                   EXIT_MACHINE_FAILURES)


def _quiet_services(verbose: bool, log_format: str, live: bool) -> None:
    """Logging of the services a build starts: Dask's connection and nanny chatter only with
    --verbose; Prefect's per-shard INFO lines give way to the live bar or the JSON events.
    Set before they start, so every worker inherits it."""
    os.environ["DASK_LOGGING__DISTRIBUTED"] = "info" if verbose else "error"
    if not verbose:  # the dashboard moving off a busy 8787 is said by warnings, not logging
        warnings.filterwarnings("ignore", message=r"Port \d+ is already in use",
                                category=UserWarning)
    if (log_format == "json" or live) and not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def _preview(cfg: Any, args: argparse.Namespace) -> Any:
    """List and plan before anything starts: an empty input, no backgrounds, a dry run and a
    dataset that is complete already are answered here."""
    from matteforge.dataset.storage import locate
    from matteforge.steps.preview import NothingToBuild, check_not_empty, preview

    storage = _build_storage(cfg, args)
    where = {name: locate(getattr(cfg, name), storage.for_location(name, getattr(cfg, name)))
             for name in ("input", "backgrounds", "output")}
    if args.log_format != "json":
        print(f"matteforge: listing {cfg.input} ...", file=sys.stderr, flush=True)
    try:
        seen = preview(cfg, where["input"], where["backgrounds"], where["output"], args.limit)
        check_not_empty(cfg, seen.listing, len(seen.backgrounds), args.allow_empty)
    except NothingToBuild as exc:
        raise CliError(str(exc)) from None
    return seen


def _say_plan(seen: Any, args: argparse.Namespace) -> None:
    from matteforge.steps.progress import emit

    if seen.plan is None:  # the plan needs the model's weights: the flow makes it
        line = f"{len(seen.listing)} input(s) listed, {len(seen.backgrounds)} background(s)"
        if args.log_format == "json":
            emit("listed", inputs=len(seen.listing), backgrounds=len(seen.backgrounds))
        else:
            print(f"matteforge: {line}", file=sys.stderr, flush=True)
        return
    emit("plan", inputs=len(seen.listing), todo=len(seen.plan.todo),
         skipped=seen.plan.skipped)


def _dry_run(seen: Any, args: argparse.Namespace) -> None:
    """What the build would do, and nothing written."""
    todo = seen.plan.todo if seen.plan is not None else seen.listing
    report = {"inputs": len(seen.listing), "backgrounds": len(seen.backgrounds),
              "to_process": len(todo),
              "already_done": seen.plan.skipped if seen.plan is not None else None,
              "damaged": len(seen.damage.sources), "unreadable_manifest_files":
              seen.damage.unreadable, "first": [f.uri for f in todo[:10]]}
    if seen.plan is None:
        report["note"] = ("the dataset has no record of this config and model yet: every "
                          "listed input would be processed unless the manifest already holds it")
    print(json.dumps(report, indent=None if args.log_format == "json" else 2))


def cmd_build(args: argparse.Namespace) -> None:
    from matteforge.dataset.storage import redact_uri
    from matteforge.progress_view import reporter
    from matteforge.steps.progress import listening

    cfg = _check_build_config(args)
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be 1 or more")
    for name in ("input", "backgrounds"):
        if getattr(cfg, name) is None:
            raise CliError(f"no {name}: give --{name} (or `{name}:` in the config)")
    show = reporter(args.log_format)
    with listening(show):
        seen = _preview(cfg, args)
        if args.dry_run:
            _dry_run(seen, args)
            return
        _say_plan(seen, args)
        _probe_lock(cfg, args)  # a build that holds the output may be changing what we read
        if seen.complete:
            print(f"matteforge: nothing to do: all {len(seen.listing)} input(s) of "
                  f"{redact_uri(cfg.output)} are done with this config and model; the dataset "
                  "is left as it is", file=sys.stderr)
            return
        _quiet_services(args.verbose, args.log_format, show.__class__.__name__ == "Bar")
        try:
            summary = _locked_build(**build_params(args))
        finally:
            show.close()
    if args.log_format != "json":
        _print_summary(summary, redact_uri(args.output) if args.output else
                       "(output from config)")
    _check_machine_failures(summary)


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    """``--changes FILE`` (nested like a config) with ``--set key.path=value`` over it."""
    import yaml

    from matteforge.config import merge_options

    changes: dict[str, Any] = {}
    if args.changes:
        try:
            loaded = yaml.safe_load(Path(args.changes).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise CliError(f"--changes {args.changes}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise CliError(f"--changes {args.changes} must be a mapping of config keys")
        changes = loaded
    for item in args.set or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--set {item!r}: expected KEY=VALUE, e.g. alpha.cf_weight=50")
        node: dict[str, Any] = {}
        leaf = node
        *parents, last = key.strip().split(".")
        for part in parents:
            leaf = leaf.setdefault(part, {})
        leaf[last] = yaml.safe_load(raw)
        changes = merge_options(changes, node)
    if not changes:
        raise CliError("reprocess needs a change: --set KEY=VALUE or --changes FILE.yaml")
    return changes


def cmd_reprocess(args: argparse.Namespace) -> None:
    from pydantic import ValidationError

    from matteforge.config import seal_storage
    from matteforge.dataset.storage import redact_uri
    from matteforge.flows.reprocess import ReprocessError

    storage = _storage_flags(args)
    params = {"source": args.source, "output": args.output, "changes": _changes(args),
              "backgrounds": args.backgrounds, "dask_address": args.dask_address,
              "n_workers": args.workers,
              "storage_options": seal_storage(storage) if storage else None}
    try:
        summary = _run_reprocess(**params)
    except ReprocessError as exc:
        raise CliError(str(exc)) from None
    except ValidationError as exc:
        from matteforge.config import explain_errors

        raise CliError("changes: " + explain_errors(exc.errors())) from None
    _print_summary(summary, redact_uri(args.output))


def cmd_demo(args: argparse.Namespace) -> None:
    from matteforge.config import load_config
    from matteforge.demo import prepare_demo_data

    _license_notice(load_config("demo"))
    portraits, backgrounds = prepare_demo_data(Path(args.data))
    summary = _run_build(config="demo", input=str(portraits), backgrounds=str(backgrounds),
                         output=args.output, n_workers=args.workers)
    _print_summary(summary, args.output)


def _repair(args: argparse.Namespace) -> None:
    """Redo exactly what is damaged: an incremental build of the dataset's own recipe and
    sources (from dataset.json, or the flags) that checks every file's sha256 first."""
    from matteforge.config import seal_storage
    from matteforge.dataset.verify import recorded_build

    storage = _storage_flags(args)
    config, sources = recorded_build(args.dataset, storage)
    config = args.config or config
    source = {"input": args.input or sources.get("input"),
              "backgrounds": args.backgrounds or sources.get("backgrounds")}
    if config is None or not all(source.values()):
        raise CliError(f"{args.dataset} has no dataset.json to repair from: give --config, "
                       "--input and --backgrounds as for the build that made it")
    print(f"repairing {args.dataset}: every file is checked, damaged samples are made again")
    summary = _locked_build(config=config, output=args.dataset, mode="incremental",
                            check_hashes=True,
                            storage_options=seal_storage(storage) if storage else None,
                            **source)
    print(f"repaired: {summary['repaired']} sample(s) redone, {summary['quarantined']} "
          f"manifest file(s) moved to quarantine/, {summary['samples']} input(s) processed")
    _check_machine_failures(summary)


def cmd_verify(args: argparse.Namespace) -> None:
    from matteforge.config import StorageConfig
    from matteforge.dataset.verify import verify_dataset

    if args.repair:
        _repair(args)
    options = StorageConfig.model_validate(_storage_flags(args)).for_location("output",
                                                                              args.dataset)
    report = verify_dataset(args.dataset, hashes=not args.no_hash, storage_options=options)
    for problem in report.problems:
        print(problem)
    for warning in report.warnings:
        print(f"warning: {warning}")
    print(f"{args.dataset}: {report.files_checked} files checked, "
          f"{len(report.problems)} problem(s)")
    if not report.ok:
        raise DatasetInvalid(f"{len(report.problems)} problem(s) in {args.dataset}")


def cmd_materialize(args: argparse.Namespace) -> None:
    """Write the files of composites a ``composite.store: false`` build did not store."""
    from matteforge.config import StorageConfig, merge_options
    from matteforge.dataset.lock import OutputLocked, output_lock
    from matteforge.dataset.materialize import materialize
    from matteforge.dataset.storage import locate, redact_uri

    storage = StorageConfig.model_validate(_storage_flags(args))
    out = locate(args.dataset, storage.for_location("output", args.dataset))
    if not out.fs.exists(out.path("manifest")):
        raise CliError(f"{args.dataset} has no manifest/: not a matteforge dataset")
    try:
        with output_lock(out):
            # for backgrounds the rows name by their own remote URI (no copy in bg/)
            remote = merge_options(storage.options, storage.backgrounds)
            done = materialize(out, args.split, remote)
    except OutputLocked as exc:
        raise CliError(str(exc), EXIT_LOCKED) from None
    which = f"{args.split} " if args.split else ""
    print(f"{redact_uri(args.dataset)}: {done.written} {which}composite file(s) written, "
          f"{done.already} already stored")


def cmd_report(args: argparse.Namespace) -> None:
    """Write ``report/index.html`` again, e.g. for a dataset built before reports existed."""
    from matteforge.config import StorageConfig
    from matteforge.dataset.report import write_report
    from matteforge.dataset.storage import locate, redact_uri

    storage = StorageConfig.model_validate(_storage_flags(args))
    out = locate(args.dataset, storage.for_location("output", args.dataset))
    if not out.fs.exists(out.path("manifest")):
        raise CliError(f"{args.dataset} has no manifest/: not a matteforge dataset")
    # Sources are only read for thumbnails of rows without files: `input:` options reach them.
    path = write_report(out, seed=args.seed, source_storage_options=storage.input or None)
    print(f"wrote {redact_uri(out.url(out.path(path)))}")


def evaluate_params(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluate flow's parameters: datasets open with ``output`` options, ground truth with
    ``input`` options; all of them sealed."""
    from matteforge.config import StorageConfig, seal_storage

    datasets = list(args.dataset) + ([args.compare] if args.compare else [])
    if len(datasets) > 2:
        raise CliError(f"evaluate compares at most two datasets, got {len(datasets)}")
    if args.band_radius is not None and args.band_radius < 0:
        raise CliError("--band-radius must be 0 or more")
    storage = StorageConfig.model_validate(_storage_flags(args))
    options = {"datasets": [storage.for_location("output", d) for d in datasets],
               "ground_truth": storage.for_location("input", args.ground_truth),
               "output": storage.for_location("output", args.output)}
    params = {"datasets": datasets, "ground_truth": args.ground_truth, "name": args.name,
              "output": args.output, "storage_options": seal_storage(options)}
    return params if args.band_radius is None else {**params, "band_radius": args.band_radius}


def cmd_evaluate(args: argparse.Namespace) -> None:
    from matteforge.config import unseal_storage
    from matteforge.dataset.evaluate import format_table
    from matteforge.flows.evaluate import EvaluationError, check_inputs, evaluate_dataset
    from matteforge.prefect_env import prefect_api

    params = evaluate_params(args)
    try:
        check_inputs(params["datasets"], params["ground_truth"], params["name"],
                     unseal_storage(params["storage_options"]))
        with prefect_api():
            result = evaluate_dataset(**params)
    except EvaluationError as exc:
        raise CliError(str(exc)) from exc
    print(format_table(result["evaluations"], result["comparison"]))
    for uri in result["written"]:
        print(f"wrote {uri}")


def _add_storage_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-option", action="append", metavar="[LOCATION:]KEY=VALUE",
                   help="fsspec storage option (repeatable; dotted KEY nests, e.g. "
                   "client_kwargs.region_name=eu-west-1); LOCATION is input, backgrounds or "
                   "output, else it applies to every remote location; never recorded")
    p.add_argument("--endpoint-url", help="object-store endpoint (S3-compatible servers)")


class _ShowDefaults(argparse.HelpFormatter):
    """--help with each flag's default, where it has one (None means "from the config")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, argparse.SUPPRESS, False) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _default(section: type[BaseModel], name: str) -> Any:
    """A config field's default: a flag that stands for it follows config.py."""
    return section.model_fields[name].default


def _choices(section: type[BaseModel], name: str) -> list[str]:
    """A ``Literal`` config field's values, in their order, as a flag's choices."""
    return list(get_args(section.model_fields[name].annotation))


def build_parser() -> argparse.ArgumentParser:
    from matteforge import __version__
    from matteforge.config import (
        DEFAULT_MODELS,
        AlphaConfig,
        CompositeConfig,
        RunConfig,
        TrimapConfig,
    )

    parser = argparse.ArgumentParser(prog="matteforge", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"matteforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="turn a folder or bucket of portraits into a dataset",
                       formatter_class=_ShowDefaults,
                       description="Flags left out come from the config; no --config is the "
                       "built-in default recipe (docs/quality.md).")
    p.add_argument("--config", default=None,
                   help="YAML file or packaged name (permissive, comp1k, demo); default: the "
                   f"built-in recipe with the best measured quality: {' + '.join(DEFAULT_MODELS)}"
                   ", KNN matting with a closed-form term, the acceptance rule (docs/quality.md)")
    p.add_argument("--input", help="folder or fsspec URI of portraits")
    p.add_argument("--backgrounds", help="folder or fsspec URI of backgrounds")
    p.add_argument("--output", help="dataset root (folder or fsspec URI)")
    p.add_argument("--dask-address", help="existing Dask scheduler, e.g. tcp://host:8786 "
                   "(default: from the config, else a LocalCluster)")
    p.add_argument("--workers", type=int, help="LocalCluster worker processes (default: from "
                   "the config, else one per CPU)")
    p.add_argument("--shard-size", type=int, help="images per Prefect task (default: from "
                   f"the config; {_default(RunConfig, 'shard_size')} without one)")
    p.add_argument("--mode", choices=_choices(RunConfig, "mode"),
                   help="skip finished inputs; redo all; redo failed ones too (default: from "
                   f"the config; {_default(RunConfig, 'mode')} without one)")
    p.add_argument("--follow-links-outside", action="store_true",
                   help="read symbolic links that lead out of the input or backgrounds folder "
                   "(default: such a link becomes a row rejected/outside_input, never opened; "
                   "config ingest.follow_links_outside)")
    p.add_argument("--limit", type=int, metavar="N",
                   help="only the first N inputs (sorted by path): a try-out of the recipe")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config, list and plan (what would be done and skipped), "
                   "then exit without writing anything")
    p.add_argument("--allow-empty", action="store_true",
                   help="build even when the input holds no image (default: that is an error)")
    p.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="text: a live progress bar on a terminal, plain lines otherwise; json: "
                   "one JSON object per event on stdout (for log shippers)")
    p.add_argument("--verbose", action="store_true",
                   help="also show Dask's and Prefect's informational logs")
    _add_storage_flags(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("demo", help="build the demo dataset from scikit-image's bundled photos")
    p.add_argument("--data", default="demo-data", help="where the demo inputs are copied")
    p.add_argument("--output", default="demo-output", help="dataset root")
    p.add_argument("--workers", type=int, default=None)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("reprocess", help="a new version of a dataset with changed settings; "
                       "only the stages a change touches are redone (docs/deploy.md, step 4)",
                       formatter_class=_ShowDefaults)
    p.add_argument("source", help="the dataset to start from (folder or fsspec URI)")
    p.add_argument("--output", required=True, help="where the new version goes (not SOURCE)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a config change, dotted key and YAML value, e.g. alpha.cf_weight=50 "
                   "or composite.effects='{bokeh: 0.3}' (repeatable)")
    p.add_argument("--changes", metavar="FILE", help="config changes as YAML, nested like a "
                   "config; --set wins over it")
    p.add_argument("--backgrounds", help="backgrounds folder (default: the source's)")
    p.add_argument("--dask-address", help="existing Dask scheduler (default: a LocalCluster)")
    p.add_argument("--workers", type=int, help="LocalCluster worker processes")
    _add_storage_flags(p)
    p.set_defaults(func=cmd_reprocess)

    p = sub.add_parser("verify", help="check a dataset: files, sizes, hashes, counts")
    p.add_argument("dataset", help="dataset root (folder or fsspec URI)")
    p.add_argument("--no-hash", action="store_true", help="check sizes only, not sha256")
    p.add_argument("--repair", action="store_true",
                   help="first redo exactly the samples whose files or manifest fail the "
                   "checks (an incremental build with the recipe and sources in dataset.json; "
                   "unreadable manifest files are moved to quarantine/), then verify")
    p.add_argument("--config", help="--repair: the build's config, if not dataset.json's")
    p.add_argument("--input", help="--repair: the portraits, if not where dataset.json says")
    p.add_argument("--backgrounds", help="--repair: the backgrounds, if not where "
                   "dataset.json says")
    _add_storage_flags(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("materialize", help="write the composite files a build with "
                       "composite.store: false left out (all, or one split's)",
                       description="Makes each composite the manifest lists without a file, "
                       "exactly as a build that stores them would, writes it to merged/ and "
                       "records it (merged_uri, sha256, bytes), shard by shard; then updates "
                       "dataset.json so `matteforge verify` passes.")
    p.add_argument("dataset", help="dataset root (folder or fsspec URI)")
    p.add_argument("--split", choices=["train", "test"],
                   help="only this split's composites, e.g. the test split of a published "
                   "benchmark (default: all)")
    _add_storage_flags(p)
    p.set_defaults(func=cmd_materialize)

    p = sub.add_parser("report", help="(re)write a dataset's HTML report, report/index.html")
    p.add_argument("dataset", help="dataset root (folder or fsspec URI)")
    p.add_argument("--seed", type=int, default=0, help="which rows the contact sheets sample")
    _add_storage_flags(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("evaluate", help="score a dataset's alphas against ground-truth mattes")
    p.add_argument("--dataset", action="append", required=True,
                   help="dataset root (folder or fsspec URI); give it twice to compare builds")
    p.add_argument("--compare", help="a second dataset to compare with the first")
    p.add_argument("--ground-truth", required=True,
                   help="folder or fsspec URI holding alpha/ or the matte files, named like "
                   "the inputs (same stem)")
    p.add_argument("--name", default="gt", help="evaluation/<name>.parquet and .json")
    p.add_argument("--output", help="write the results here instead of <dataset>/evaluation/")
    p.add_argument("--band-radius", type=int,
                   help="ground-truth band: px around the matte's soft pixels and hard edges "
                   "(default 5)")
    _add_storage_flags(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("mask", help="person mask of one image")
    p.add_argument("image")
    p.add_argument("--out", required=True, help="binary mask PNG (0/255)")
    p.add_argument("--prob", help="also write the probability map as 8-bit PNG")
    p.add_argument("--model", default=DEFAULT_MODELS[0],  # the recipe's first model
                   help="rvm, modnet, meet or mediapipe-selfie (one model; `matteforge sample` "
                   "runs the build's ensemble)")
    p.add_argument("--weights", help="own copy of the model weights")
    p.add_argument("--passes", type=int, help="rvm: times the photo is fed (default 2; 1 fastest)")
    p.add_argument("--threshold", type=float, default=_default(TrimapConfig, "threshold"))
    p.set_defaults(func=cmd_mask)

    p = sub.add_parser("trimap", help="0/128/255 trimap from a mask or probability PNG")
    p.add_argument("mask")
    p.add_argument("--out", required=True)
    p.add_argument("--width", type=int, help="band half-width in px (default: scaled to size)")
    p.add_argument("--width-fraction", type=float,
                   default=_default(TrimapConfig, "width_fraction"))
    p.add_argument("--shape", choices=_choices(TrimapConfig, "kernel_shape"),
                   default=_default(TrimapConfig, "kernel_shape"))
    p.add_argument("--threshold", type=float, default=_default(TrimapConfig, "threshold"))
    p.set_defaults(func=cmd_trimap)

    p = sub.add_parser("alpha", help="KNN-matting alpha from an image and a trimap")
    p.add_argument("image")
    p.add_argument("trimap")
    p.add_argument("--out", required=True)
    p.add_argument("--neighbors", type=int, default=_default(AlphaConfig, "n_neighbors"))
    p.add_argument("--device", default=None,
                   help="solve on a torch device ('cuda', 'auto'); default: CPU with AMG")
    p.set_defaults(func=cmd_alpha)

    p = sub.add_parser("sample", help="one portrait through the build's recipe: model map, "
                       "trimap, alpha, foreground, quality figures and verdict")
    p.add_argument("image")
    p.add_argument("--out", required=True, help="folder for alpha_model/trimap/alpha/fg.png")
    p.add_argument("--config", default=None, help="as for build; default: the built-in recipe")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("foreground", help="estimate the foreground colours from image + alpha")
    p.add_argument("image")
    p.add_argument("alpha")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_foreground)

    p = sub.add_parser("composite", help="Composition-1K composite of fg + alpha onto bg")
    p.add_argument("fg")
    p.add_argument("alpha")
    p.add_argument("bg")
    p.add_argument("--out", required=True)
    p.add_argument("--mode", choices=_choices(CompositeConfig, "mode"),
                   default=_default(CompositeConfig, "mode"))
    p.set_defaults(func=cmd_composite)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DatasetInvalid as exc:
        print(f"matteforge: {exc}", file=sys.stderr)
        return 1
    except CliError as exc:
        print(f"matteforge: error: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:  # one line for the user; MATTEFORGE_DEBUG=1 for the traceback
        if os.environ.get("MATTEFORGE_DEBUG"):
            raise
        text = str(exc).strip()
        first = text.splitlines()[0] if text else ""
        print(f"matteforge: error: {type(exc).__name__}: {first}", file=sys.stderr)
        return EXIT_BAD_INPUT if isinstance(exc, (OSError, ValueError, TypeError)) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
