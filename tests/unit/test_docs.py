"""docs/method.md, the method in the project's own words, is what the code cites."""

from __future__ import annotations

import re

from east.report import PAPER
from tests.helpers import ROOT

METHOD = ROOT / "docs" / "method.md"
MODELS = {"1B": "llama-3.2-1b", "8B": "llama-3.1-8b"}
ROWS = {
    "default (no training)": "default",
    "SFT": "sft",
    "SFT + EAST": "sft_east",
    "DPO": "dpo",
    "DPO + EAST": "dpo_east",
    "KTO": "kto",
    "KTO + EAST": "kto_east",
}


def _section(number: str) -> str:
    text = METHOD.read_text()
    start = text.index(f"\n## {number}. ")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_the_papers_numbers_in_the_code_are_the_documents():
    lines = [line for line in _section("3").splitlines() if line.startswith("|") and "---" not in line]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    seen = 0
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        row = ROWS[cells[0]]
        for name, value in zip(header[1:], cells[1:]):
            size, test = name.split()
            if test == "AVG":
                continue
            assert PAPER[MODELS[size]][row][test.lower()] == float(value), (size, row, test)
            seen += 1
    assert seen == 7 * 4
    assert sum(len(tests) for rows in PAPER.values() for tests in rows.values()) == seen


def test_code_cites_the_method_document_that_the_repository_holds():
    cited, stale = [], []
    for path in [*ROOT.glob("east/**/*.py"), *ROOT.glob("conf/**/*.yaml"), *ROOT.glob("experiments/*.sh")]:
        text = path.read_text()
        if "east-method.md" in text:  # the maintainers' notes, not in a clone
            stale.append(str(path.relative_to(ROOT)))
        for section in re.findall(r"docs/method\.md §(\d+)", text):
            cited.append(section)
            assert f"\n## {section}. " in METHOD.read_text(), (path, section)
    assert not stale, f"cite docs/method.md instead: {stale}"
    assert len(cited) >= 4
