"""The demo and the command line, on a run small enough for a test."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

from actzip import cli, demo  # noqa: E402


def test_demo_trains_both_runs_and_writes_its_outputs(tmp_path, capsys):
    result = demo.run_demo(steps=3, batch_size=16, width=4, image_size=16, out=tmp_path, progress=False)
    baseline, compressed = result["runs"]
    assert baseline["run"] == "baseline" and compressed["run"] == "actzip gradual"
    assert 0 <= compressed["test_accuracy"] <= 100
    assert baseline["peak_raw_bytes"] == compressed["peak_raw_bytes"] > 0
    assert compressed["peak_saved_bytes"] < compressed["peak_raw_bytes"]
    assert compressed["failures"] == 0
    printed = capsys.readouterr().out
    for column in ("test acc", "peak saved (raw)", "peak saved (held)", "ratio", "step time"):
        assert column in printed
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["config"]["steps"] == 3 and len(saved["history"]) == 3
    assert (tmp_path / "history.csv").exists()
    if (tmp_path / "demo.png").exists():
        assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"
    else:
        pytest.importorskip("matplotlib")  # only a missing matplotlib excuses a missing plot
        pytest.fail("demo.png was not written")


def test_demo_calibrates_the_adaptive_schedule(tmp_path):
    lines = []
    result = demo.run_demo(
        steps=3, batch_size=16, width=4, image_size=16, out=tmp_path, schedule="adaptive",
        progress=False, print_fn=lines.append,
    )
    assert result["runs"][1]["run"] == "actzip adaptive"
    assert any(line.startswith("Adaptive calibrated: a = ") for line in lines)


def test_make_schedule_names_every_choice():
    from actzip.schedule import Adaptive, Constant, Gradual, MemoryBudget

    kinds = {"gradual": Gradual, "constant": Constant, "adaptive": Adaptive, "budget": MemoryBudget}
    assert set(kinds) == set(demo.SCHEDULES)
    for name, kind in kinds.items():
        assert isinstance(demo.make_schedule(name, 100, budget_bytes=10**6), kind)
    gradual = demo.make_schedule("gradual", 100, final_bound=2e-2)
    assert gradual.bound_at(0) == 1e-4 and gradual.bound_at(50) == 2e-2
    with pytest.raises(ValueError):
        demo.make_schedule("budget", 100)
    with pytest.raises(ValueError):
        demo.make_schedule("sometimes", 100)


def test_cli_demo_arguments_reach_the_demo(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda **kwargs: seen.update(kwargs))
    assert cli.main(["demo", "--steps", "7", "--schedule", "constant", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert seen["steps"] == 7 and seen["schedule"] == "constant" and seen["device"] == "cpu"
    assert seen["out"] == str(tmp_path)


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--steps", "0"])
    with pytest.raises(SystemExit):
        cli.main(["demo", "--schedule", "sometimes"])
    assert cli.main([]) == 1  # no command: help


def test_cli_reports_a_missing_cuda_device(capsys, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert cli.main(["demo", "--device", "cuda", "--steps", "2", "--no-progress"]) == 2
    assert "CUDA" in capsys.readouterr().err


def test_python_dash_m_actzip_runs_the_command_line():
    package_root = Path(demo.__file__).resolve().parents[1]
    completed = subprocess.run(
        [sys.executable, "-m", "actzip", "info"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(package_root), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("actzip ")
    # Users holding saved streams need to know which format versions this build reads.
    assert "stream format: writes version 2, reads versions 1 to 2" in completed.stdout
