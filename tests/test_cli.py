"""The CLI: real verbs only, one-line errors with a non-zero exit, no tracebacks, no overwrites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from maskrt.cli import main


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
