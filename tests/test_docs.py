"""The README and docs/benchmarks.md hold together: every relative link (images included) names a file that exists
and every #anchor a heading of its page, the README's contents list its sections, and the benchmark tools'
marked sections of docs/benchmarks.md are where ``--docs`` rewrites them (tools/docs_section.py)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "benchmarks.md"]
# the tools that rewrite a marked section of docs/benchmarks.md with --docs, by section name
DOC_SECTIONS = {"bench_guidance": "tools/bench_guidance.py", "bench_text_to_3d": "tools/bench_text_to_3d.py",
                "bench_image_to_3d": "tools/bench_image_to_3d.py", "bench_edit": "tools/bench_edit.py",
                "bench_speed": "tools/bench_speed.py", "bench_step": "tools/bench_step.py"}

sys.path.insert(0, str(ROOT / "tools"))


def prose(text: str) -> str:
    """``text`` without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", prose(page.read_text(encoding="utf-8")), re.M)}


def links(page: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", prose(page.read_text(encoding="utf-8")))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_names_a_file_and_heading_that_exist(page):
    seen = links(page)
    assert seen
    for target in seen:
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.is_file(), f"{page.name}: link to {target!r}: no file {dest}"
        if anchor:
            assert dest.suffix == ".md" and anchor in anchors(dest), f"{page.name}: no heading for {target!r}"


def test_the_readme_opens_with_its_contents_and_a_code_map():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    sections = [m.group(1) for m in re.finditer(r"^## (.+)$", prose(text), re.M)]
    assert sections[:3] == ["Contents", "Quick start (fresh machine)", "Code map"]
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    for heading in sections[1:]:
        assert f"(#{slug(heading)})" in contents, f"the contents leave out {heading!r}"
    assert "(docs/benchmarks.md)" in contents
    code_map = text.split("## Code map", 1)[1].split("\n## ", 1)[0]
    for folder in ("meshes/", "representations/", "renderers/", "priors/", "guidance/", "export/", "metrics.py",
                   "runner/", "systems/", "batch/", "studio/", "api.py", "cli.py", "configs/", "assets/", "tools/",
                   "tests/"):
        assert f"{folder}`" in code_map, f"the code map leaves out {folder}"
        assert (ROOT / folder).exists() or (ROOT / "dreamcore" / folder).exists(), folder
    assert "pip install .[diffusers]" in text.split("## Code map", 1)[0]  # the quick start: as a package too


def test_the_long_tables_live_in_docs_benchmarks():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    docs = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    rows = [line for line in prose(readme).splitlines() if line.startswith("|")]
    assert len(rows) < 80  # the configuration and guidance reference tables, not measured figures
    for heading in ("## Text-only benchmark", "## Prior benchmark", "## Guidance benchmark", "## The demo",
                    "## Batch faults", "## Geometry on unseen meshes", "## Meshes and DMTet",
                    "## Speed benchmark"):
        assert heading in docs
    for section in ("### Prior benchmark", "### Text-only benchmark", "## Measured (2 CPU cores, no GPU)"):
        body = readme.split(section, 1)[1].split("\n#", 1)[0]
        assert "docs/benchmarks.md" in body and "\n|" not in body, section


@pytest.mark.parametrize("name", sorted(DOC_SECTIONS))
def test_each_benchmark_tool_rewrites_its_marked_section_only(name, tmp_path):
    from docs_section import replace_section

    assert f"replace_section(args.docs, {name!r}" in (ROOT / DOC_SECTIONS[name]).read_text().replace('"', "'")
    page = tmp_path / "benchmarks.md"
    original = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    page.write_text(original, encoding="utf-8")
    begin = re.search(rf"^<!-- begin {name}\b.*-->\n", original, re.M)
    end = re.search(rf"^<!-- end {name} -->$", original, re.M)
    assert begin and end and begin.end() < end.start()
    report = "# The tool's own title\n\nNew figures:\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    replace_section(page, name, report)
    once = page.read_text(encoding="utf-8")
    assert once == original[: begin.end()] + "\nNew figures:\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n" + original[end.start():]
    replace_section(page, name, report)
    assert page.read_text(encoding="utf-8") == once  # a second run of the tool changes nothing more
    page.write_text("# no markers\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=f"no section marked <!-- begin {name}"):
        replace_section(page, name, report)
    assert page.read_text(encoding="utf-8") == "# no markers\n"
