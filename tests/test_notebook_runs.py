"""The quick-start notebook runs top to bottom (nbclient, a real Jupyter kernel) on a tiny experiment."""
import json
import os
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
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT)] + sys.path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})
    client.execute()  # raises CellExecutionError naming the cell when one fails
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [output for output in outputs if output.output_type == "error"]
    texts = "".join(output.get("text", "") + json.dumps(output.get("data", {})) for output in outputs)
    assert "quickstart_tiny" in texts                   # the run directory of the tiny experiment
    assert "xray3.png" in texts                         # predict_images scored the four written images
    assert '"method": "gradcam"' in texts               # the explanation cell printed its figures
    assert list((tmp_path / "runs" / "quickstart_tiny").glob("*/report.html"))
