"""The docs are checked against the repository they describe: every config option is
documented, every path a doc names exists, results are written in one place, and nothing
points outside the checkout. Reads files only; runs in well under a second."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
RESULTS = ROOT / "experiments" / "robust" / "results.md"
DOCS = sorted([README, *(ROOT / "docs").glob("*.md"), *(ROOT / "experiments").glob("**/README.md")])
# Files the commands write into their output folders: named by the docs, never in the checkout.
WRITTEN_BY_RUNS = {"report.md", "summary.md"}
# Folders the commands create (git-ignored): the docs say where their output goes.
CREATED_BY_RUNS = ("experiments/robust/runs",)
# Root-relative repository paths as docs write them in prose or code spans.
REPO_PATH = re.compile(r"(?<![\w/.<${-])(?:rmu|conf|docs|experiments|tests)/[\w./-]*[\w/]")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def doc_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def config_groups() -> dict[str, list[str]]:
    """{group: option names} for every folder of conf/ holding option files (nested ones,
    such as hydra/launcher, by their path)."""
    groups = {}
    for folder in sorted(p for p in CONF.rglob("*") if p.is_dir()):
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options:
            groups[folder.relative_to(CONF).as_posix()] = options
    return groups


def group_rows(text: str) -> dict[str, str]:
    """{group: options cell} of every table row whose first cell is a group name in backticks."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 2 and re.fullmatch(r"`[\w/@]+`", cells[0]):
            rows[cells[0].strip("`")] = cells[1]
    return rows


def named_options(cell: str) -> set[str]:
    """The options a table cell lists: names in backticks, leaving out remarks in parentheses."""
    while re.search(r"\([^()]*\)", cell):
        cell = re.sub(r"\([^()]*\)", "", cell)
    return set(re.findall(r"`([\w.-]+)`", cell))


def test_conf_has_the_groups_this_test_reads():
    groups = config_groups()
    assert {"model", "data", "eval", "experiment", "attack", "debug", "adapter", "logger"} <= set(groups)
    assert len(groups["model"]) >= 9


@pytest.mark.parametrize("group", sorted(config_groups()))
def test_configuration_md_names_every_option_of_every_group(group):
    rows = group_rows(CONFIGURATION.read_text())
    assert group in rows, f"docs/configuration.md has no table row for the config group `{group}` (conf/{group}/)"
    options = config_groups()[group]
    listed = named_options(rows[group])
    missing = [o for o in options if o not in listed]
    assert not missing, f"docs/configuration.md, group `{group}`: options {missing} (conf/{group}/) are not documented"
    gone = sorted(listed - set(options))
    assert not gone, f"docs/configuration.md, group `{group}`: {gone} are listed but conf/{group}/ has no such file"


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_group_table_in_a_doc_is_complete(doc):
    """A group table anywhere else (the README's, say) lists every option too, or none at all."""
    groups = config_groups()
    for group, cell in group_rows(doc.read_text()).items():
        if group in groups and named_options(cell):
            missing = [o for o in groups[group] if o not in named_options(cell)]
            assert not missing, f"{doc_id(doc)}, group `{group}`: {missing} missing; list all or link docs/configuration.md"


def test_readme_is_short_and_its_first_screen_names_both_halves():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to docs/"
    first_screen = "\n".join(lines[:30])
    for name in ("python -m rmu.train", "python -m rmu.eval", "python -m rmu.export", "python -m rmu.report",
                 "python -m rmu.attack", "make robust", "make demo", "make test"):
        assert name in first_screen, f"README.md's first 30 lines do not name {name}"
    assert "docs/configuration.md" in README.read_text()


def links(doc: Path) -> list[str]:
    """Relative link targets, with any #anchor, in a doc (web links and in-page anchors left out)."""
    return [t for t in LINK.findall(doc.read_text()) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", doc.read_text(), flags=re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_relative_link_points_into_the_repository(doc):
    for target in links(doc):
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc_id(doc)} links outside the repository: {target}"
        assert resolved.exists(), f"{doc_id(doc)} links to a missing file: {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{doc_id(doc)}: {target}: no such heading in {path}"
    for anchor in re.findall(r"\]\(#([^)\s]+)\)", doc.read_text()):
        assert anchor in anchors(doc), f"{doc_id(doc)}: #{anchor}: no such heading"


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_every_repository_path_a_doc_names_exists(doc):
    text = LINK.sub("]", doc.read_text())  # link targets are checked above, relative to the doc
    for path in sorted(set(REPO_PATH.findall(text))):
        if path.startswith(CREATED_BY_RUNS):
            continue
        assert (ROOT / path).exists(), f"{doc_id(doc)} names {path}, which is not in the repository"


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_no_doc_refers_to_files_outside_the_repository(doc):
    text = doc.read_text()
    for outside in ("../shared", "/work/", "/home/", "/Users/"):
        assert outside not in text, f"{doc_id(doc)} refers to {outside!r}, outside the repository"
    in_repo = {p.name for top in ("", "docs", "experiments", "rmu", "tests", "conf")
               for p in (ROOT / top).glob("*.md" if not top else "**/*.md")}
    for name in sorted(set(re.findall(r"(?<![\w/.-])([\w-]+\.md)\b", text))):
        assert name in in_repo | WRITTEN_BY_RUNS, f"{doc_id(doc)} cites {name}, which is not in the repository"


@pytest.mark.parametrize("doc", DOCS, ids=doc_id)
def test_python_names_a_doc_places_in_a_file_are_there(doc):
    """"`rmu_step` in [`rmu/unlearn/step.py`](…)" must name the file that defines rmu_step."""
    text = doc.read_text()
    for name, path in re.findall(r"`(\w+)`,? in \[?`?((?:\.\./)*[\w/]+\.py)", text):
        source = (doc.parent / path if path.startswith("..") else ROOT / path).resolve()
        assert source.exists(), f"{doc_id(doc)}: {path} does not exist"
        assert re.search(rf"^(?:def|class) {name}\b", source.read_text(), flags=re.M), \
            f"{doc_id(doc)} says `{name}` is in {path}, which does not define it"


def test_results_tables_live_in_one_place():
    rows = [line for line in RESULTS.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    assert rows
    for doc in [*DOCS, *(ROOT / "docs").glob("*.md")]:
        copied = [r for r in rows if r in doc.read_text()]
        assert not copied, f"{doc_id(doc)} copies results.md's rows; link experiments/robust/results.md instead"
    for doc in (README, ROOT / "docs" / "robust.md"):
        assert "experiments/robust/results.md" in doc.read_text(), f"{doc_id(doc)} does not link results.md"


def test_experiments_readme_lists_every_experiment_folder():
    text = (ROOT / "experiments" / "README.md").read_text()
    folders = sorted(p.name for p in (ROOT / "experiments").iterdir()
                     if p.is_dir() and not p.name.startswith((".", "_")))
    assert {"bench", "bundled_data", "robust"} <= set(folders)
    missing = [f for f in folders if not re.search(rf"^- `{f}/", text, flags=re.M)]
    assert not missing, f"experiments/README.md has no line for experiments/{missing}"
