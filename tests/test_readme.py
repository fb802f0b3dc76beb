"""The README's Python snippets run as written, in order, in a fresh interpreter (one session).

They are smoke-sized by design; the test runs them in an empty directory (the installed package
alone, no checkout on the path), so their ``runs/`` folders land there.
"""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def python_blocks(text: str) -> list[str]:
  """The fenced ```python blocks of a markdown text, in order."""
  return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_python_blocks_run(tmp_path):
  blocks = python_blocks((ROOT / "README.md").read_text())
  assert len(blocks) >= 3
  script = "\n\n".join(blocks)
  p = subprocess.run(
    [sys.executable, "-c", script],
    cwd=tmp_path,  # The installed package alone: no checkout on the path.
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert p.returncode == 0, p.stderr[-4000:]
  assert "ε =" in p.stdout and (tmp_path / "runs" / "readme_dp" / "summary.json").exists()


def test_block_extraction():
  text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = 2\n```\n"
  assert python_blocks(text) == ["x = 1\n", "y = 2\n"]
