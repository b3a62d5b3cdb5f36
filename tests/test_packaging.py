"""`python -m rmu.train` must find its config tree and bundled data from an installed
wheel too, not only from a checkout."""

import subprocess
import sys
import zipfile

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_wheel_carries_conf_and_corpora_and_composes_from_anywhere(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True)
    wheel = next((tmp_path / "dist").glob("rmu-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "rmu/conf/train.yaml" in names and "rmu/conf/experiment/wmdp_reference.yaml" in names
    assert "rmu/corpora/mcq_chem.jsonl" in names
    assert "rmu/evaluation/harness_tasks/_rmu_template_yaml" in names and "rmu/evaluation/harness_tasks/rmu_chem.yaml" in names
    assert "rmu/conf/export.yaml" in names and "rmu/conf/adapter/lora.yaml" in names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-c", "import rmu.config.schema, sys; print(rmu.config.schema.CONF_DIR)"],
                          cwd=elsewhere, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert proc.stdout.strip() == str(site / "rmu" / "conf"), proc.stderr
    proc = subprocess.run([sys.executable, "-m", "rmu.train", "--cfg", "job", "rmu.layer_id=5"],
                          cwd=elsewhere, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "layer_id: 5" in proc.stdout and "bundled:forget_chem.jsonl" in proc.stdout
