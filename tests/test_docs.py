"""The README and docs/*.md against the code: the presets table against conf/experiment/, every
flag named for a ``losslab-*`` command against its parser, relative links and anchors, and the
sample outputs of the default commands against what those commands print."""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO_ROOT, run_command

README = REPO_ROOT / "README.md"
PAGES = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
README_MAX_LINES = 250
PRESET_COLUMNS = [
    "preset",
    "dataset",
    "hidden",
    "loss",
    "optimizer",
    "lr",
    "momentum",
    "epochs",
    "batch",
    "validation",
]

# --------------------------------------------------------------------------------------------
# Reading Markdown: fenced blocks, code spans, tables, headings
# --------------------------------------------------------------------------------------------

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def fenced_blocks(text: str) -> list[str]:
    return FENCE.findall(text)


def prose(text: str) -> str:
    """``text`` without its fenced blocks, each left as a blank line."""
    return FENCE.sub("\n", text)


def code_spans(text: str) -> list[str]:
    """The contents of inline code spans, as CommonMark reads them."""
    spans = []
    for match in CODE_SPAN.finditer(text):
        content = match.group(2).replace("\n", " ")
        if content.startswith(" ") and content.endswith(" ") and content.strip():
            content = content[1:-1]
        spans.append(content)
    return spans


def split_row(line: str) -> list[str]:
    """The cells of a table row; a ``|`` inside a code span does not split."""
    cells, current, in_code = [], "", ""
    i, body = 0, line.strip().removeprefix("|").removesuffix("|")
    while i < len(body):
        if body[i] == "`":
            run = re.match(r"`+", body[i:]).group(0)
            in_code = "" if in_code == run else (in_code or run)
            current += run
            i += len(run)
            continue
        if body[i] == "|" and not in_code:
            cells.append(current.strip())
            current = ""
        else:
            current += body[i]
        i += 1
    return [*cells, current.strip()]


@dataclass
class Table:
    before: str  # the paragraph just before the table
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)


def tables(text: str) -> list[Table]:
    found: list[Table] = []
    paragraph: list[str] = []  # the paragraph being read, else the last one
    lines = prose(text).splitlines()
    i, ended = 0, False
    while i < len(lines):
        line = lines[i]
        if line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-:| ]+\|$", lines[i + 1]):
            table = Table(" ".join(paragraph), split_row(line))
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                table.rows.append(split_row(lines[i]))
                i += 1
            found.append(table)
            paragraph = []
            continue
        if line.startswith("#"):
            paragraph, ended = [], True
        elif not line.strip():
            ended = True
        else:
            paragraph, ended = ([line] if ended else [*paragraph, line]), False
        i += 1
    return found


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose(text), re.MULTILINE):
        base, n = slug(heading), 0
        while (candidate := base if n == 0 else f"{base}-{n}") in found:
            n += 1
        found.add(candidate)
    return found


def section(text: str, heading: str) -> str:
    """From ``heading`` (a whole line, e.g. ``## Studies``) to the next heading of its level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(f"\n{heading}\n")
    end = re.search(rf"^#{{1,{level}}} ", text[start + len(heading) + 2 :], re.MULTILINE)
    return text[start : start + len(heading) + 2 + end.start()] if end else text[start:]


# --------------------------------------------------------------------------------------------
# The presets table
# --------------------------------------------------------------------------------------------


def readme_presets() -> dict[str, dict[str, str]]:
    text = section(README.read_text(encoding="utf-8"), "## Configuration and presets")
    (table,) = [t for t in tables(text) if t.header and t.header[0] == "preset"]
    assert table.header == PRESET_COLUMNS, table.header
    return {row[0]: dict(zip(PRESET_COLUMNS, row, strict=True)) for row in table.rows}


def preset_row(cfg) -> dict[str, str]:
    """A preset's row as the README writes it, from its composed and validated config."""
    momentum = cfg.optimizer.get("momentum")
    validation = cfg.trainer.validation.value
    return {
        "preset": cfg.preset,
        "dataset": cfg.dataset.name,
        "hidden": str(list(cfg.model.hidden)),
        "loss": cfg.loss.name,
        "optimizer": cfg.optimizer.name,
        "lr": str(cfg.optimizer.learning_rate),
        "momentum": "–" if momentum is None else str(momentum),
        "epochs": str(cfg.trainer.epochs),
        "batch": str(cfg.trainer.batch_size),
        "validation": "test"
        if validation == "test"
        else f"{validation} {cfg.trainer.validation_split}",
    }


PRESET_FILES = sorted(p.stem for p in (REPO_ROOT / "conf" / "experiment").glob("*.yaml"))


def test_presets_table_has_one_row_per_preset_file():
    assert sorted(readme_presets()) == PRESET_FILES
    names = [
        row[0]
        for t in tables(README.read_text(encoding="utf-8"))
        if t.header[:1] == ["preset"]
        for row in t.rows
    ]
    assert len(names) == len(set(names)), "a preset has two rows"


@pytest.mark.parametrize("preset", PRESET_FILES)
def test_presets_table_row_matches_the_composed_config(compose_raw, preset):
    from losslab.config import validate

    cfg = validate(compose_raw(f"experiment={preset}"))
    assert cfg.preset == preset, f"conf/experiment/{preset}.yaml sets preset: {cfg.preset}"
    row = readme_presets().get(preset)
    assert row is not None, f"README.md has no row for the preset {preset}"
    expected = preset_row(cfg)
    for column in PRESET_COLUMNS:
        assert row[column] == expected[column], (
            f"README.md, preset {preset}, column {column}: {row[column]!r}, "
            f"but conf/ composes {expected[column]!r}"
        )


def test_preset_row_tells_a_difference(compose_raw):
    from losslab.config import validate

    row = preset_row(validate(compose_raw("experiment=separable_hinge")))
    assert row["validation"] == "split 0.2"
    assert row["momentum"] == "–"
    assert row["hidden"] == "[4, 2]"
    other = preset_row(validate(compose_raw("experiment=separable_hinge", "trainer.epochs=31")))
    assert other["epochs"] != row["epochs"]


# --------------------------------------------------------------------------------------------
# The flags of the losslab-* commands
# --------------------------------------------------------------------------------------------


def scripts() -> dict[str, str]:
    """The ``losslab-*`` console scripts and their ``module:function``."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    found = pyproject["project"]["scripts"]
    return {name: target for name, target in found.items() if name.startswith("losslab-")}


def parser_flags(target: str) -> set[str]:
    """The options a command's argparse parser accepts, read from its ``--help``."""
    module, function = target.split(":")
    main = getattr(importlib.import_module(module), function)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0, out.getvalue()
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", out.getvalue()))


@pytest.fixture(scope="module")
def flags() -> dict[str, set[str]]:
    return {name: parser_flags(target) for name, target in scripts().items()}


def command_pattern(names) -> re.Pattern:
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w.-])(?:[\w.\\/-]*[\\/])?({alternatives})(?![\w-])")


def words(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=True)
    except ValueError:  # an unbalanced quote: words as they stand
        return command.split()


def named_flags(command: str, names) -> list[tuple[str, str]]:
    """(command, flag) for every flag given to a ``losslab-*`` command in a command line."""
    found = []
    current = None
    for word in words(command):
        if word in (";", "&&", "||", "|", "then"):
            current = None
            continue
        match = command_pattern(names).fullmatch(word)
        if match:
            current = match.group(1)
        elif current and re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", word):
            found.append((current, word.split("=", 1)[0]))
    return found


def blocks(text: str) -> list[tuple[str, str]]:
    """(block, context) for each paragraph, list item and table row of ``text``'s prose; a table
    row's context is the paragraph before its table."""
    found: list[tuple[str, str]] = []
    paragraph: list[str] = []
    before = ""

    def close() -> None:
        nonlocal paragraph, before
        if paragraph:
            found.append(("\n".join(paragraph), ""))
            before = "\n".join(paragraph)
        paragraph = []

    for line in prose(text).splitlines():
        if line.startswith("#"):  # a heading: what follows has a context of its own
            close()
            before = ""
        elif line.startswith("|"):
            if paragraph:
                close()
            found.append((line, before))
        elif not line.strip():
            close()
        elif re.match(r"^\s*([-*]|\d+\.)\s", line):
            close()
            paragraph = [line]
        else:
            paragraph.append(line)
    close()
    return found


def documented_flags(text: str, names) -> list[tuple[str, str, str]]:
    """(command, flag, where) for every flag the text names for a ``losslab-*`` command: in
    command lines (fenced blocks, code spans), and as a code span of its own (``--out DIR``)
    in a paragraph, list item or table row that names the command, or after a paragraph that
    does."""
    found = []
    pattern = command_pattern(names)
    for block in fenced_blocks(text):
        for line in block.splitlines():
            found += [(c, f, line) for c, f in named_flags(line.removeprefix("$ "), names)]
    for block, context in blocks(text):
        spans = code_spans(block)
        for span in spans:
            found += [(c, f, span) for c, f in named_flags(span, names)]
        commands = set(pattern.findall(block)) or set(pattern.findall(context))
        for span in spans:
            first = words(span)[:1]
            if first and re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", first[0]) and commands:
                flag = first[0].split("=", 1)[0]
                found += [(" or ".join(sorted(commands)), flag, span)]
    return found


def test_every_documented_flag_exists(flags):
    names = list(flags)
    checked = 0
    for page in PAGES:
        for commands, flag, where in documented_flags(page.read_text(encoding="utf-8"), names):
            accepted = set().union(*(flags[c] for c in commands.split(" or ")))
            assert flag in accepted, (
                f"{page.relative_to(REPO_ROOT)}: {commands} has no option {flag} ({where!r}); "
                f"it takes {', '.join(sorted(accepted))}"
            )
            checked += 1
    assert checked >= 10, "found too few documented flags: the parser of the pages is broken"


def test_readme_lists_every_flag_of_losslab_report(flags):
    text = section(README.read_text(encoding="utf-8"), "## Studies and the report")
    (table,) = [t for t in tables(text) if t.header[:1] == ["flag"]]
    assert "losslab-report" in table.before
    listed = {words(code_spans(row[0])[0])[0] for row in table.rows}
    assert listed == flags["losslab-report"] - {"-h", "--help"}


def test_flag_check_tells_a_difference(flags):
    names = list(flags)
    text = "Run `losslab-report --latest --no-such-flag`.\n\n"
    text += "```bash\nlosslab-doctor --dry-run\n```\n"
    found = documented_flags(text, names)
    assert ("losslab-report", "--no-such-flag", "losslab-report --latest --no-such-flag") in found
    assert ("losslab-doctor", "--dry-run", "losslab-doctor --dry-run") in found
    assert "--no-such-flag" not in flags["losslab-report"]
    table = "The flags of `losslab-rerun`:\n\n| flag | what |\n|---|---|\n| `--bogus X` | no |\n"
    assert [(c, f) for c, f, _ in documented_flags(table, names)] == [("losslab-rerun", "--bogus")]
    # a folder named like a command is not the command
    assert documented_flags("`../losslab-dvc-remote --x`", names) == []


# --------------------------------------------------------------------------------------------
# Links
# --------------------------------------------------------------------------------------------


def links(text: str) -> list[str]:
    return LINK.findall(CODE_SPAN.sub("", prose(text)))


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-zA-Z][\w+.-]*:", target):  # https:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif (
            anchor
            and linked.suffix == ".md"
            and anchor not in anchors(linked.read_text(encoding="utf-8"))
        ):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_point_at_something(page):
    assert broken_links(page) == []


def test_every_docs_page_is_linked_from_the_readme():
    targets = links(README.read_text(encoding="utf-8"))
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in targets}
    for page in PAGES[1:]:
        assert page.resolve() in linked, f"README.md does not link {page.relative_to(REPO_ROOT)}"


def test_link_check_tells_a_difference(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## A section: `code`, too\n\n[ok](#a-section-code-too) [self](page.md#title)"
        " ![img](missing.png) [gone](#nowhere) [web](https://example.org/x)\n"
        "`[not a link](nope.md)`\n\n```\n[not a link](nope2.md)\n```\n"
    )
    assert broken_links(page) == [
        "missing.png: no such file",
        "#nowhere: no heading #nowhere in page.md",
    ]


# --------------------------------------------------------------------------------------------
# Sample outputs
# --------------------------------------------------------------------------------------------


def readme_block_with(line_start: str) -> list[str]:
    """The lines of the README's fenced block that has a line starting with ``line_start``."""
    found = [
        block.splitlines()
        for block in fenced_blocks(README.read_text(encoding="utf-8"))
        if any(line.startswith(line_start) for line in block.splitlines())
    ]
    assert len(found) == 1, f"README.md has {len(found)} blocks with a line {line_start!r}"
    return found[0]


def committed_metrics() -> dict:
    done = subprocess.run(
        ["git", "show", "HEAD:metrics.json"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    text = done.stdout if done.returncode == 0 else (REPO_ROOT / "metrics.json").read_text()
    return json.loads(text)


def test_readme_setup_commands_are_make_run_and_make_test():
    text = section(README.read_text(encoding="utf-8"), "## Quick start")
    first = next(b for b in fenced_blocks(text) if b.strip())
    commands = [line.split("#", 1)[0].strip() for line in first.splitlines()]
    assert commands == ["make run", "make test"]


def test_readme_is_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; keep the rest in docs/"


def test_make_run_sample_is_what_dvc_metrics_show_and_make_print():
    from dvc.commands.metrics import DEFAULT_PRECISION
    from dvc.compare import metrics_table

    block = readme_block_with("Path ")
    table = metrics_table(
        {"workspace": {"data": {"metrics.json": {"data": committed_metrics()}}}},
        precision=DEFAULT_PRECISION,
        round_digits=True,  # as `dvc metrics show` formats them
    )
    header = next(i for i, line in enumerate(block) if line.startswith("Path "))
    assert block[header].split() == list(table.keys())
    assert [line.split() for line in block[header + 1 : header + 1 + len(list(table))]] == [
        list(row) for row in table
    ]
    # what `make run` echoes after `dvc metrics show`
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE).group(1)
    after = recipe[recipe.index("dvc metrics show") :]
    echoed = [e for e in re.findall(r'@echo "(.*)"', after)]
    assert echoed, "the Makefile's run target echoes nothing after dvc metrics show"
    rest = [line for line in block[header + 1 :] if line.strip()][len(list(table)) :]
    assert rest == echoed


def test_losslab_sample_is_what_a_default_run_prints(tmp_path, tracking_uri):
    block = readme_block_with("losslab: outputs in ")
    run_dir = tmp_path / "run"
    done = run_command(
        [str(BIN / "losslab"), "trainer.verbose=0", f"hydra.run.dir={run_dir}"],
        tmp_path,
        tracking_uri,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    printed = done.stdout.splitlines()
    assert printed[0] == f"losslab: outputs in {run_dir}", done.stdout
    where = next(i for i, line in enumerate(block) if line.startswith("losslab: outputs in "))
    assert re.fullmatch(
        r"losslab: outputs in \S*outputs/\d{4}-\d{2}-\d{2}/\d{2}-\d{2}-\d{2}", block[where]
    ), block[where]
    assert block[where + 1 :] == printed[1:], "the README's train and test lines"
    # the progress line's last epoch, from the run's history
    with (run_dir / "model" / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    last = rows[-1]
    epochs = len(rows)
    expected = (
        rf"Epoch {epochs}/{epochs} - loss: {float(last['loss']):.4f} - "
        rf"val_loss: {float(last['val_loss']):.4f} - took \d+:\d\d"
    )
    assert re.fullmatch(expected, block[where - 1]), (block[where - 1], expected)


def error_samples() -> list[tuple[str, list[str]]]:
    """Each ``$ losslab ...`` line of a fenced block in the pages whose output, the lines up to
    the next ``$``, is a losslab error: a config error, answered before any data is made."""
    samples = []
    for page in PAGES:
        for block in fenced_blocks(page.read_text(encoding="utf-8")):
            lines = block.splitlines()
            for i, line in enumerate(lines):
                if not line.startswith("$ losslab "):
                    continue
                output = []
                for after in lines[i + 1 :]:
                    if after.startswith("$ "):
                        break
                    output.append(after)
                if output and output[0].startswith("losslab: error:"):
                    samples.append((line[2:], output))
    return samples


@pytest.mark.parametrize("command, expected", error_samples(), ids=lambda v: str(v)[:60])
def test_error_samples_are_what_losslab_prints(command, expected, tmp_path, tracking_uri):
    done = run_command(
        [str(BIN / "losslab"), *shlex.split(command)[1:]], tmp_path, tracking_uri, timeout=120
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines() == expected


def test_there_are_error_samples():
    assert len(error_samples()) >= 2
