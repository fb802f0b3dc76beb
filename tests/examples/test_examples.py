"""The examples/ notebooks (jupytext percent scripts) execute top to bottom in a Jupyter kernel."""

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def test_there_are_three_examples():
  assert [p.name for p in EXAMPLES] == [
    "dp_your_flax_model.py",
    "fairness_audit.py",
    "federated_your_partition.py",
  ]


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_notebook_executes(path, tmp_path):
  jupytext = pytest.importorskip("jupytext")
  nbclient = pytest.importorskip("nbclient")
  notebook = jupytext.read(path)
  client = nbclient.NotebookClient(
    notebook,
    timeout=600,
    kernel_name="python3",
    resources={"metadata": {"path": str(ROOT)}},  # The kernel starts in the checkout.
  )
  client.execute()
  outputs = [
    o.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
  ]
  text = "".join(outputs)
  assert "Traceback" not in text
  expected = {
    "dp_your_flax_model": "MIA AUC",
    "fairness_audit": "SEAT effect size",
    "federated_your_partition": "'activity':",
  }[path.stem]
  assert expected in text, text[-3000:]
  if path.stem == "dp_your_flax_model":  # Progress lines reach the notebook (absl INFO on).
    assert "ETA" in text and "privacy/epsilon" in text, text[-3000:]
