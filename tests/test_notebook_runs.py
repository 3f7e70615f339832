"""The quick-start notebook runs top to bottom (nbclient, a real Jupyter kernel) on a tiny experiment
and, with TFMED_QUICKSTART_TINY, a small fine-tune in the user-script section."""
import ast
import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
TINY = """
name: quickstart_tiny
data: {source: pneumonia_mnist}
split: {method: predefined, test_fraction: 0.0}   # as the default experiment: thresholds and plots on val
preprocess: {image_size: 32}
model:
  mode: svm
  backbone: efficientnet_lite0
  weights: null
  svm: {taps: [late], C: [1.0], cv: 2}
runs_dir: RUNS
"""


@pytest.mark.slow
def test_the_quickstart_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(TINY.replace("RUNS", str(tmp_path / "runs")))
    monkeypatch.setenv("TFMED_QUICKSTART_EXPERIMENT", str(experiment))
    monkeypatch.setenv("TFMED_QUICKSTART_TINY", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT)] + sys.path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})
    client.execute()  # raises CellExecutionError naming the cell when one fails
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    texts = "\n".join(output["text"] if "text" in output else json.dumps(output.get("data", {})) for output in outputs)
    assert f"tfmed is already installed: {ROOT / 'tfmed'}" in texts   # the install cell installed nothing
    assert f"working folder: {ROOT}" in texts
    # TensorFlow's C++ start-up lines (CUDA probes, oneDNN) are kept out of the outputs
    assert not [output["text"] for output in outputs if output.get("name") == "stderr" and "I0000" in output["text"]
                or "cuInit" in output.get("text", "")]
    assert "quickstart_tiny" in texts                   # the run directory of the tiny experiment
    assert "xray3.png" in texts and "pneumonia" in texts  # predict_images scored the four images, labels beside
    assert re.search(r"val AUC [0-9.]+ \([0-9.]+-[0-9.]+\); at Youden's threshold sensitivity", texts)
    assert '"method": "gradcam"' in texts               # the explanation cell printed its figures
    assert list((tmp_path / "runs" / "quickstart_tiny").glob("*/report.html"))
    # the user-script fine-tune: two epochs of ClinicalMetrics figures, StagedUnfreeze opened blocks in
    # the second, and the ImageNet backbone learnt (300 training images at 32 px reach about 0.9)
    line = next(line for line in texts.splitlines() if line.startswith("{'val_auc'"))
    figures = ast.literal_eval(line)
    assert len(figures["val_auc"]) == 2 and figures["val_auc"][-1] > 0.75
    assert all(0.0 <= value <= 1.0 for value in figures["val_sensitivity"] + figures["val_specificity"])
    assert figures["unfrozen_blocks"][0] == 0 and figures["unfrozen_blocks"][1] > 0
    assert re.search(r"epoch 2: loss [0-9.]+, val_auc [0-9.]+", texts)   # EpochLogger's lines
    assert "threshold stored in the model: 0." in texts


def _executed(name: str, monkeypatch) -> tuple[list, str]:
    """Run notebooks/NAME top to bottom in a Jupyter kernel (no cell may fail); its outputs, and their texts."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT)] + sys.path))
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    return outputs, "\n".join(output["text"] for output in outputs if "text" in output)


@pytest.mark.slow
def test_the_ct_notebook_runs_top_to_bottom(monkeypatch):
    outputs, texts = _executed("ct_views.ipynb", monkeypatch)
    # the real CT slice: read in Hounsfield units (modality LUT applied), then windowed to 0-255 RGB
    assert "modality: CT" in texts and "(128, 128, 1): -896 to 1167 HU" in texts
    assert "one window: (128, 128, 3) three windows: (128, 128, 3)" in texts
    # the phantom volume read back in LPS, and its nine views
    assert "orientation: slices toward S, rows toward P, columns toward L" in texts
    assert "views: (9, 41, 41, 1)" in texts
    # the windows, the views and the explanations' overview
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 3
    # the experiment on 40 volumes: nine views each, features + SVM, its summary table
    assert "of 20 training volumes (9 views each) at 64 px" in texts
    aucs = [float(line.split()[2]) for line in texts.splitlines() if re.match(r"(val|test)\s+youden\s", line)]
    assert len(aucs) == 2 and min(aucs) >= 0.8, aucs   # simulated nodules and vessels: 1.0 on 2026-12-04
    assert any("text/html" in output.get("data", {}) for output in outputs)   # the report
    # Grad-CAM of test cases on mosaics of their nine views: each peak named by its view
    assert re.search(r"group\s+label\s+score\s+peak_view\s+peak_row\s+peak_col", texts)
    assert "'method': 'gradcam'" in texts and "'deletion_auc'" in texts


@pytest.mark.slow
def test_the_own_data_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("TFMED_OWN_DATA_TINY", "1")  # 60 images at 32 px with random weights, 40 of site B
    monkeypatch.setenv("TFMED_OWN_DATA_RUNS", str(tmp_path / "runs"))
    _, texts = _executed("own_data.ipynb", monkeypatch)
    assert re.search(r"my_images \{'normal': 30, 'pneumonia': 30\}", texts)
    assert "the run's checks passed" in texts   # tfmed validate on the experiment
    assert re.search(r"pooled out-of-fold AUC [0-9.]+ \([0-9.]+-[0-9.]+\); folds( [0-9.]+,){4} [0-9.]+", texts)
    assert "test split (carved from the same folders: in-distribution) AUC" in texts
    before = re.search(r"site B, the model and threshold as trained: AUC ([0-9.]+)", texts)
    after = re.search(r"site B, recalibrated on its tuning half: AUC ([0-9.]+)", texts)
    assert before and after and before.group(1) == after.group(1)  # recalibration keeps the ranking
    assert len(list((tmp_path / "runs" / "my_study").glob("*/evaluations/*/metrics.json"))) == 1
    assert len(list((tmp_path / "runs" / "my_study_recalibrated").glob("*/evaluations/*/metrics.json"))) == 1
