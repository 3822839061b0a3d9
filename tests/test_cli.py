"""Stage commands on single files, as a user debugging one image runs them."""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pytest
from PIL import Image

from matteforge.cli import EXIT_BAD_INPUT, main


@pytest.fixture()
def files(tmp_path, astronaut, coffee):
    paths = {"image": tmp_path / "astro.png", "bg": tmp_path / "coffee.png"}
    Image.fromarray(astronaut).save(paths["image"])
    Image.fromarray(coffee).save(paths["bg"])
    yy, xx = np.mgrid[:512, :512]
    disk = (np.hypot(yy - 300, xx - 250) < 150).astype(np.uint8) * 255
    paths["mask"] = tmp_path / "mask.png"
    Image.fromarray(disk).save(paths["mask"])
    return paths


def _read(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_trimap_alpha_foreground_composite_chain(files, tmp_path):
    tri, alpha = tmp_path / "tri.png", tmp_path / "alpha.png"
    fg, out = tmp_path / "fg.png", tmp_path / "out.png"
    assert main(["trimap", str(files["mask"]), "--out", str(tri), "--width", "6"]) == 0
    assert set(np.unique(_read(tri))) == {0, 128, 255}
    assert main(["alpha", str(files["image"]), str(tri), "--out", str(alpha)]) == 0
    a = _read(alpha)
    assert a.shape == (512, 512) and (a[_read(tri) == 255] == 255).all()
    assert main(["foreground", str(files["image"]), str(alpha), "--out", str(fg)]) == 0
    assert _read(fg).shape == (512, 512, 3)
    assert main(["composite", str(fg), str(alpha), str(files["bg"]), "--out", str(out)]) == 0
    merged = _read(out)
    assert merged.shape == (512, 512, 3)
    opaque = a == 255
    assert np.array_equal(merged[opaque], _read(fg)[opaque])


def test_mask_command_writes_mask_and_probability(files, tmp_path):
    mask, prob = tmp_path / "m.png", tmp_path / "p.png"
    assert main(["mask", str(files["image"]), "--out", str(mask), "--prob", str(prob)]) == 0
    m = _read(mask)
    assert set(np.unique(m)) <= {0, 255} and m.mean() > 10
    assert _read(prob).dtype == np.uint8
    fast = tmp_path / "fast.png"
    assert main(["mask", str(files["image"]), "--out", str(fast), "--passes", "1"]) == 0
    assert np.mean(_read(fast) != m) < 0.05, "one pass: the same person, a little less exact"


def test_bad_input_exits_nonzero_with_one_line(files, tmp_path, capsys):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    assert main(["trimap", str(junk), "--out", str(tmp_path / "t.png")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("matteforge: error:") and "not_an_image" in err and "\n" not in err
    missing = tmp_path / "nope.png"
    assert main(["alpha", str(missing), str(files["mask"]), "--out", "x.png"]) == EXIT_BAD_INPUT
    assert "cannot read" in capsys.readouterr().err
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(small)
    code = main(["alpha", str(files["image"]), str(small), "--out", str(tmp_path / "a.png")])
    assert code == EXIT_BAD_INPUT
    assert "trimap is 10x10 but image is 512x512" in capsys.readouterr().err


def test_alpha_from_a_plain_mask_warns_that_nothing_is_solved(files, tmp_path, capsys):
    out = tmp_path / "alpha.png"
    assert main(["alpha", str(files["image"]), str(files["mask"]), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "no unknown (grey) pixels" in err and "matteforge trimap" in err
    np.testing.assert_array_equal(_read(out), _read(files["mask"]))


def test_verify_of_a_missing_location_says_there_is_no_dataset(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nowhere")]) != 0
    out = capsys.readouterr().out
    assert "no dataset at" in out and "never finished" not in out


def test_sample_runs_the_build_recipe_on_one_portrait(files, tmp_path, capsys, one_torch_thread):
    out = tmp_path / "one"
    assert main(["sample", str(files["image"]), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert ": ok;" in said and "model_disagreement" in said and "edge_support" in said
    for name in ("alpha_model", "trimap", "alpha", "fg"):
        assert (out / f"{name}.png").is_file()
    trimap, alpha = _read(out / "trimap.png"), _read(out / "alpha.png")
    assert set(np.unique(trimap)) <= {0, 128, 255}
    assert (alpha[trimap == 255] == 255).all() and (alpha[trimap == 0] == 0).all()


def test_version_and_build_help_show_what_a_user_needs(capsys):
    from matteforge import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"matteforge {__version__}"
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "built-in recipe with the best measured quality" in text
    assert "(default: incremental)" not in text  # --mode has no default of its own: the config's
    assert "from the config" in text


@pytest.mark.parametrize(("argv", "said"), [
    (["--input", "{d}/in/no/such", "--output", "{d}/out", "--backgrounds", "{d}/bg"],
     "--input {d}/in/no/such: no such file or folder"),
    (["--input", "{d}/in", "--output", "{d}/out", "--backgrounds", "file://{d}/nope"],
     "--backgrounds file://{d}/nope: no such file or folder"),
    (["--input", "{d}/in", "--backgrounds", "{d}/bg"], "no output: give --output"),
])
def test_build_refuses_missing_locations_in_one_line_before_starting(tmp_path, capsys, argv,
                                                                     said):
    argv = [a.format(d=tmp_path) for a in argv]
    (tmp_path / "in").mkdir()
    (tmp_path / "bg").mkdir()
    assert main(["build", *argv]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said.format(d=tmp_path) in err[0]


def test_an_unknown_model_name_is_refused_with_a_suggestion(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("segment:\n  model: [rvm, modnett@384]\n")
    assert main(["build", "--config", str(config), "--input", str(tmp_path),
                 "--output", str(tmp_path / "out"), "--backgrounds", str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert "unknown segmentation model 'modnett'" in err and "did you mean 'modnet'" in err


def _photos(folder, n: int, side: int = 64) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((side, side + i, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")


@pytest.mark.parametrize(("inputs", "backgrounds", "said"), [
    (0, 1, "--input {d}/in holds no image"),
    (2, 0, "--backgrounds {d}/bg holds no image"),
])
def test_an_empty_input_or_no_backgrounds_is_refused_before_anything_starts(
        tmp_path, capsys, inputs, backgrounds, said):
    _photos(tmp_path / "in", inputs)
    (tmp_path / "in" / "notes.txt").write_text("not an image\n")
    _photos(tmp_path / "bg", backgrounds)
    argv = ["build", "--input", str(tmp_path / "in"), "--backgrounds", str(tmp_path / "bg"),
            "--output", str(tmp_path / "out")]
    assert main(argv) == EXIT_BAD_INPUT
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert said.format(d=tmp_path) in last
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


def test_dry_run_lists_and_plans_and_writes_nothing(tmp_path, capsys):
    _photos(tmp_path / "in", 3)
    _photos(tmp_path / "bg", 1)
    argv = ["build", "--input", str(tmp_path / "in"), "--backgrounds", str(tmp_path / "bg"),
            "--output", str(tmp_path / "out"), "--dry-run", "--limit", "2"]
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["inputs"] == 2 and plan["to_process"] == 2 and plan["backgrounds"] == 1
    assert plan["first"] == [str(tmp_path / "in" / "0.png"), str(tmp_path / "in" / "1.png")]
    assert not (tmp_path / "out").exists()
    assert main([*argv[:-2], "--limit", "0"]) == EXIT_BAD_INPUT


def test_reprocess_changes_come_from_set_flags_over_a_file(tmp_path):
    from matteforge.cli import CliError, _changes

    changes = tmp_path / "changes.yaml"
    changes.write_text("trimap: {width_fraction: 0.02}\nalpha: {cf_weight: 10}\n")
    args = argparse.Namespace(changes=str(changes), set=["alpha.cf_weight=50",
                                                         "composite.effects={bokeh: 0.3}"])
    assert _changes(args) == {"trimap": {"width_fraction": 0.02}, "alpha": {"cf_weight": 50},
                              "composite": {"effects": {"bokeh": 0.3}}}
    with pytest.raises(CliError, match="KEY=VALUE"):
        _changes(argparse.Namespace(changes=None, set=["cf_weight"]))
    with pytest.raises(CliError, match="needs a change"):
        _changes(argparse.Namespace(changes=None, set=None))


def test_progress_events_as_plain_lines_and_as_json():
    from matteforge.progress_view import JsonLines, Lines

    text, lines = io.StringIO(), io.StringIO()
    show, log = Lines(text), JsonLines(lines)
    for listener in (show, log):
        listener("plan", {"inputs": 4, "todo": 3, "skipped": 1})
        listener("plan", {"inputs": 4, "todo": 3, "skipped": 1})  # the flow says it again
        listener("shard", {"shards_done": 1, "shards": 2, "images": 2, "images_total": 3,
                           "counts": {"ok": 1, "rejected": 1}})
    said = text.getvalue().splitlines()  # the flow logs each shard itself
    assert said == ["matteforge: plan: 4 input(s), 3 to process, 1 already done"]
    events = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["plan", "plan", "shard"]
    assert events[2]["counts"] == {"ok": 1, "rejected": 1} and "time" in events[0]


MISTAKES = [
    (["--input", "{d}/nope"], "--input {d}/nope: no such file or folder"),
    (["--input", "{d}/empty"], "--input {d}/empty holds no image"),
    (["--backgrounds", "{d}/empty"], "--backgrounds {d}/empty holds no image"),
    (["--output", ""], "no output: give --output"),
    (["--config", "{d}/model.yaml"], "unknown segmentation model 'rvmm'"),
    (["--config", "{d}/key.yaml"], "segment.modle: unknown key (did you mean segment.model?)"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("change", "said"), MISTAKES, ids=lambda v: str(v)[:30])
def test_each_mistake_is_one_line_through_the_real_cli_and_starts_nothing(tmp_path, change,
                                                                          said):
    """A real `matteforge build` process: non-zero, one error line, no process spawned."""
    import os
    import shutil
    import subprocess
    import sys
    import time

    _photos(tmp_path / "in", 2)
    _photos(tmp_path / "bg", 1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "model.yaml").write_text("segment: {model: rvmm}\n")
    (tmp_path / "key.yaml").write_text("segment: {modle: rvm}\n")
    flags = {"--input": str(tmp_path / "in"), "--backgrounds": str(tmp_path / "bg"),
             "--output": str(tmp_path / "out")}
    for flag, value in zip(change[::2], change[1::2], strict=True):
        flags[flag] = value.format(d=tmp_path)
    argv = [a for flag, value in flags.items() if value for a in (flag, value)]
    command = [sys.executable, "-m", "matteforge.cli", "build", *argv]
    trace = tmp_path / "execve.log"
    if shutil.which("strace"):
        command = ["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(trace), *command]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home")}
    env.pop("PREFECT_API_URL", None)
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    print(f"refused in {time.monotonic() - started:.1f} s")
    assert proc.returncode == EXIT_BAD_INPUT
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and said.format(d=tmp_path) in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "home").exists()
    if trace.exists():  # the CLI itself, and no child: no server, no worker
        assert len([x for x in trace.read_text().splitlines() if "execve(" in x]) == 1


def test_the_process_that_plans_a_build_does_not_import_the_stages_or_the_models():
    """The CLI plans and schedules; the workers run the stages and the models. Importing them
    here cost every build ~1 s of CPU beside the workers (pymatting and numba, the solver, the
    recipe), and loading the models to read their ids ~2-3 s more before the first shard."""
    import subprocess
    import sys

    heavy = ("matteforge.steps.shard", "matteforge.tasks.recipe", "matteforge.tasks.alpha",
             "matteforge.tasks.foreground", "pymatting", "numba", "torch", "onnxruntime",
             "matteforge.tasks.segment")
    code = ("import sys, matteforge.cli, matteforge.flows.build\n"
            "from matteforge.config import BuildConfig\n"
            "from matteforge.models.identity import segment_identity\n"
            "segment_identity(BuildConfig().segment)\n"
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
