"""The README's Python snippet runs as written (keeps the documented API honest)."""

import re
from pathlib import Path


def test_readme_python_snippet_runs(capsys):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no python snippet"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    first, second = (float(x) for x in out.strip().splitlines()[-1].strip("[]").split())
    assert first > 1 > second and abs(first + second - 2) < 1e-9  # uncertain question weighs more
