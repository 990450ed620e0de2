import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import random_net

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(*args):
    # one thread: the multi-threaded CPU backward of the renderer sums in a varying order, and the
    # resume test compares bits
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(EXAMPLES / "minimal_loop.py"), *args], capture_output=True, text=True,
                            timeout=600, check=False, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def psnrs(output: str) -> list[float]:
    return [float(part.split()[0]) for part in output.split("test PSNR")[1:]]


def test_minimal_loop_with_adam_improves():
    before, after = psnrs(run("--optimizer", "adam", "--steps", "40", "--size", "24"))
    assert after > before + 0.5


def test_minimal_loop_with_learn2splat_saves_and_resumes_exactly(tmp_path):
    random_net().save_pretrained(tmp_path / "net")
    common = ["--optimizer", "l2s", "--checkpoint", str(tmp_path / "net"), "--size", "24"]
    straight = run(*common, "--steps", "6", "--save", str(tmp_path / "a.pt"))
    run(*common, "--steps", "3", "--save", str(tmp_path / "half.pt"))
    resumed = run(*common, "--steps", "3", "--resume", str(tmp_path / "half.pt"), "--save", str(tmp_path / "b.pt"))
    assert "step 6" in straight and "step 6" in resumed
    a, b = (torch.load(tmp_path / f, weights_only=True) for f in ("a.pt", "b.pt"))
    for k, v in a["splats"].items():
        assert torch.equal(v, b["splats"][k])
