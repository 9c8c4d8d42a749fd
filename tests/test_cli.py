"""The CLI: real verbs only, one-line errors with a non-zero exit, no tracebacks, no overwrites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from maskrt.pipeline.main import main


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in out + err
    for f in fragments:
        assert f in lines[0]


def test_help_lists_real_verbs() -> None:
    code, out, _ = run("--help")
    assert code == 0
    for verb in ("data", "train", "eval", "demo"):
        assert f"  {verb}" in out


def _verbs() -> dict[str, object]:
    """Every leaf command by its full name (``data shapes`` included)."""
    import click

    verbs: dict[str, object] = {}
    for name, command in main.commands.items():
        if isinstance(command, click.Group):
            verbs.update({f"{name} {sub}": c for sub, c in command.commands.items()})
        else:
            verbs[name] = command
    return verbs


def test_every_verb_speaks_one_vocabulary() -> None:
    """Same option, same name, same meaning, same help text, in every verb's --help."""
    import click

    seen: dict[str, tuple[str, str, str]] = {}  # option -> (verb, help, type)
    shared = {"--output", "--force", "--arch", "--data", "--calib-data", "--calib-images",
              "--limit", "--max-batch", "--iters", "--json", "--method", "--backend"}  # fmt: skip
    for verb, command in _verbs().items():
        code, out, _ = run(*verb.split(), "--help")
        assert code == 0, verb
        # the old spellings are accepted but hidden
        for old in ("--out ", "--max-images", "--images N"):
            assert old not in out, (verb, old)
        for param in command.params:  # type: ignore[attr-defined]
            if not isinstance(param, click.Option):
                continue
            long = max(param.opts, key=len)
            names = [o for o in param.opts if o not in getattr(param, "hidden_aliases", ())]
            if "--output" in names:
                assert names == ["-o", "--output"], verb
                long = "--output"
            if long not in shared:
                continue
            kind = type(param.type).__name__ + str(getattr(param.type, "choices", ""))
            if long in seen and long not in ("--output", "--data"):
                first, help_text, first_kind = seen[long]
                assert param.help == help_text, f"{long}: {verb} and {first} differ"
                assert kind == first_kind, f"{long}: {verb} and {first} differ"
            seen.setdefault(long, (verb, param.help or "", kind))
    assert {"--output", "--arch", "--calib-data", "--calib-images"} <= set(seen)
    arch = next(p for p in _verbs()["infer"].params if p.name == "arch")  # type: ignore[attr-defined]
    assert isinstance(arch.type, click.Choice)


def test_old_option_spellings_still_work(tmp_path: Path) -> None:
    """`--out` (now -o/--output) and `calibrate --data` (now --calib-data) stay as hidden
    aliases for one release."""
    out = tmp_path / "o"
    code, _, err = run("train", "--out", str(out), "--data", str(tmp_path / "missing"))
    assert code == 1 and "dataset root" in err and "does not exist" in err
    code, _, err = run("calibrate", str(tmp_path / "m.onnx"), "--precision", "int8",
                       "--out", str(out), "--data", str(tmp_path))  # fmt: skip
    assert code == 1 and "m.onnx" in err  # got past option parsing to the missing model
    code, _, err = run("infer", "m.onnx", "x.png")
    assert code == 2 and "Missing option '-o' / '--output'." in err  # the alias stays unnamed


def test_data_shapes_writes_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    code, stdout, _ = run("data", "shapes", str(out), "--train", "3", "--val", "2")
    assert code == 0, stdout
    coco = json.loads((out / "annotations" / "instances_val.json").read_text())
    assert len(coco["images"]) == 2
    assert_one_line_error(*run("data", "shapes", str(out), "--train", "3"), "--force")
    assert run("data", "shapes", str(out), "--train", "3", "--val", "2", "--force")[0] == 0


def test_eval_errors_are_one_line(tmp_path: Path, shapes_dataset: Path) -> None:
    assert_one_line_error(
        *run("eval", str(tmp_path / "missing.pt"), "--data", str(shapes_dataset)), "does not exist"
    )
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    assert_one_line_error(*run("eval", str(junk), "--data", str(shapes_dataset)), "not a loadable")
    assert_one_line_error(
        *run("eval", str(junk), "--data", str(tmp_path)), "not a maskrt dataset root"
    )
    assert_one_line_error(*run("eval", str(junk)), "--data")


def test_train_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    out.write_bytes(b"keep me")
    assert_one_line_error(*run("train", "-o", str(out), "--iters", "1"), "--force")
    assert out.read_bytes() == b"keep me"


def test_eval_prints_ap_and_writes_coco_json(
    tmp_path: Path, demo_checkpoint: Path, shapes_dataset: Path
) -> None:
    results = tmp_path / "res.json"
    code, out, err = run(
        "eval",
        str(demo_checkpoint),
        "--data",
        str(shapes_dataset),
        "--limit",
        "6",
        "--json",
        str(results),
    )
    assert code == 0, err
    assert "bbox" in out and "segm" in out and "AP50" in out
    records = json.loads(results.read_text())
    assert records and {"image_id", "bbox", "score", "category_id", "segmentation"} <= set(
        records[0]
    )
    assert {r["image_id"] for r in records} <= set(range(1, 7))


@pytest.mark.parametrize("args", [["train", "--iters", "1"], ["data", "shapes"]])
def test_usage_errors_exit_two(args: list[str]) -> None:
    code, _, err = run(*args)
    assert code == 2 and "Traceback" not in err
