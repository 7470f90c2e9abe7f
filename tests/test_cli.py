"""The command line: the demo main job, listings and usage errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from vmamba.cli import main


def test_demo_prints_shapes(capsys):
    assert main(["demo", "--model", "vanilla_vmamba_tiny", "--size", "64", "96"]) == 0
    out = capsys.readouterr().out
    assert "22,893,448 parameters" in out
    assert "stage 3    (1, 768, 2, 3)" in out and "logits     (1, 1000)" in out


def test_models_lists_zoo_and_backends(capsys):
    assert main(["models", "vmamba_tiny_*"]) == 0
    out = capsys.readouterr().out
    assert "vmamba_tiny_s1l8" in out and "30,249,064" in out and "torch" in out


def test_usage_errors_are_not_tracebacks(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--model", "nope"])
    assert e.value.code == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["demo", "--size", "abc", "3"])
    assert e.value.code == 2


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "vmamba", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout
