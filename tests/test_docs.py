"""The user's guide (README.md) and the pages in docs/ against the code: every link and image
resolves, every documented `ps-trainer` flag parses, every config key named exists, every
config key is documented in docs/config.md, and the README stays a guide, not a notebook."""
from __future__ import annotations

import dataclasses
import functools
import re
import shlex
import shutil
import subprocess
import typing
from configparser import ConfigParser
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
CONFIG_DOC = ROOT / "docs" / "config.md"
README_MAX_BYTES = 16_000
EXPECTED_DOCS = ("config.md", "deploy.md", "performance.md", "results.md")

FENCE = re.compile(r"^[ \t]*(```|~~~)[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(.+?)(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
COMMAND = re.compile(r"(?<![\w/.~-])ps-trainer(?=\s|$)")
FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")
SET_KEY = re.compile(r"--set[ =]+['\"]?([A-Za-z_][\w.<>-]*)=")
REPO_PATH = re.compile(r"(?<![\w./~-])(?:ps_trainer|workers|configs|deploy|tests|docs)/[\w./-]*\w")
FILE_SUFFIX = re.compile(r"\.(?:jsonl|json|ya?ml|py|md|pth?|png|csv|txt)$")
PLACEHOLDER = "<name>"


def _ids(paths) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


# --------------------------------------------------------------------------- markdown

def _split_code(text: str) -> tuple[list[str], list[str], str]:
    """(fenced blocks, inline code spans, the prose with both blanked out)."""
    blocks = [m.group(2) for m in FENCE.finditer(text)]
    prose = FENCE.sub("\n", text)
    spans = [m.group(2) for m in INLINE_CODE.finditer(prose)]
    return blocks, spans, INLINE_CODE.sub("code", prose)


def _code_lines(text: str) -> list[str]:
    """Every line of code on a page: fenced lines (shell continuations joined) and inline
    spans (a span broken over two lines of the page is one line)."""
    blocks, spans, _ = _split_code(text)
    lines = []
    for block in blocks:
        lines += re.sub(r"\\\n[ \t]*", " ", block).splitlines()
    return lines + [" ".join(span.split()) for span in spans]


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.lru_cache(maxsize=None)
def _anchors(page: Path) -> frozenset[str]:
    text = FENCE.sub("\n", page.read_text())
    seen: dict[str, int] = {}
    anchors = set()
    for match in HEADING.finditer(text):
        slug = _slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return frozenset(anchors)


def test_the_documentation_pages_exist():
    assert {p.name for p in DOCS} >= set(EXPECTED_DOCS)


def test_readme_is_a_guide_not_a_notebook():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, (f"README.md is {size} bytes (at most {README_MAX_BYTES}): "
                                      f"move measurements to docs/results.md or docs/performance.md")


def test_readme_starts_with_the_two_commands():
    text = README.read_text()
    first = re.search(r"^## (.+)$", text, re.M)
    assert first and first.group(1).strip() == "Two commands", "README's first section"
    section = text[first.end():].split("\n## ", 1)[0]
    commands = [b.strip() for b in re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M)]
    assert len(commands) == 2, commands
    quickstart, suite = commands
    assert "ps-trainer train --config configs/quickstart.yaml" in quickstart
    assert (ROOT / "configs" / "quickstart.yaml").is_file()
    assert re.search(r"\bpython -m pytest\b", suite), suite
    setup = ConfigParser()
    setup.read(ROOT / "setup.cfg")
    extras = set(setup["options.extras_require"]) if setup.has_section(
        "options.extras_require") else set()
    for extra in re.findall(r"\.\[([\w,-]+)\]", quickstart + suite):
        assert set(extra.split(",")) <= extras, f"pip extra [{extra}] is not in setup.cfg"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_links_and_images_resolve(page):
    _, _, prose = _split_code(page.read_text())
    targets = LINK.findall(prose)
    broken = []
    for target in targets:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):     # http(s), mailto, ...
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.name}")
    assert not broken, broken


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_repository_paths_in_code_exist(page):
    missing = sorted({path for line in _code_lines(page.read_text())
                      for path in REPO_PATH.findall(line) if not (ROOT / path).exists()})
    assert not missing, missing


# --------------------------------------------------------------------------- the CLI

@functools.lru_cache(maxsize=None)
def _help(words: tuple[str, ...]) -> str:
    exe = shutil.which("ps-trainer")
    if exe is None:
        pytest.skip("the ps-trainer console script is not installed (pip install -e .)")
    done = subprocess.run([exe, *words, "--help"], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0, (f"`ps-trainer {' '.join(words)} --help` failed: "
                                  f"{done.stderr.strip()[-500:]}")
    return done.stdout


def _documented_commands(text: str) -> list[tuple[tuple[str, ...], list[str], str]]:
    """(subcommand words, flags, the command as written) of every `ps-trainer ...` in code."""
    found = []
    for line in _code_lines(text):
        for match in COMMAND.finditer(line):
            before, rest = line[:match.start()], line[match.end():]
            for quote in "\"'":                    # a command quoted for ray exec and the like
                if before.count(quote) % 2 and quote in rest:
                    rest = rest[:rest.index(quote)]
            rest = re.split(r"&&|\|\||;|\s\|\s|\s&(?:\s|$)", rest)[0]
            try:
                words = shlex.split(rest, comments=False)
            except ValueError:
                words = rest.split()
            command: tuple[str, ...] = ()
            if words and re.fullmatch(r"[a-z][\w-]*", words[0]):
                command = (words[0],)
                if words[0] == "data" and len(words) > 1 and re.fullmatch(r"[a-z]+", words[1]):
                    command += (words[1],)
            found.append((command, FLAG.findall(rest), f"ps-trainer{rest}".strip()))
    return found


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_documented_cli_flags_parse(page):
    problems = []
    for command, flags, written in _documented_commands(page.read_text()):
        if not command and not flags:
            continue                              # the bare name, in prose
        text = _help(command)
        for flag in flags:
            if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
                problems.append(f"{flag} is not an option of `ps-trainer {' '.join(command)}`"
                                f" (in: {written})")
    assert not problems, problems


def test_the_readme_documents_commands():
    """The flag check above must see the README's commands (a guard against a parser that
    silently finds nothing)."""
    commands = {c for c, _, _ in _documented_commands(README.read_text())}
    assert {("train",), ("status",), ("scale",), ("eval",), ("finetune",), ("export",),
            ("data", "export")} <= commands


# --------------------------------------------------------------------------- config keys

@functools.lru_cache(maxsize=None)
def _registries():
    from ps_trainer.core.balancing import BALANCERS
    from ps_trainer_workers.tasks import TASKS

    return TASKS, BALANCERS


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _nested_dataclass(tp) -> Optional[type]:
    if dataclasses.is_dataclass(tp):
        return tp
    return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)


def _walk(cls, parts: list[str]) -> bool:
    """True when `parts` names a key of dataclass `cls` (free-form mappings take any key)."""
    from ps_trainer.config import FrozenDict

    hints = typing.get_type_hints(cls)
    if parts[0] not in hints:
        return False
    if len(parts) == 1:
        return True
    tp = hints[parts[0]]
    if tp is FrozenDict:
        return True
    nested = _nested_dataclass(tp)
    return nested is not None and _walk(nested, parts[1:])


def _is_config_key(key: str) -> bool:
    from ps_trainer.config import Config, TaskConfig

    tasks, balancers = _registries()
    parts = key.split(".")
    if parts[0] == "tasks" and len(parts) > 1:
        name, rest = parts[1], parts[2:]
        if name != PLACEHOLDER and name not in tasks:
            return False
        if len(rest) >= 2 and rest[0] == "options":
            classes = [tasks.get(t) for t in ([name] if name != PLACEHOLDER else tasks)]
            return len(rest) == 2 and any(rest[1] in _field_names(c.Options) for c in classes)
        return not rest or _walk(TaskConfig, rest)
    if parts[:2] == ["balancing", "options"] and len(parts) > 2:
        options = {n for b in balancers for n in _field_names(balancers.get(b).Options)}
        return parts[2] in options and (len(parts) == 3 or parts[2] == "weights")
    return _walk(Config, parts)


def _section_names() -> list[str]:
    from ps_trainer.config import Config

    return _field_names(Config)


def _keys_written(text: str) -> set[str]:
    sections = "|".join(_section_names())
    pattern = re.compile(rf"(?<![\w./<~-])(?:{sections})\.[A-Za-z_<][\w<>.]*")
    return {key.rstrip(".") for key in pattern.findall(text) if not FILE_SUFFIX.search(key)}


def _documented_keys() -> list[str]:
    """Every key a user can set: the leaves of the config dataclasses (tasks as
    tasks.<name>.KEY), every registered task's options and every balancing method's."""
    from ps_trainer.config import Config, FrozenDict, TaskConfig

    tasks, balancers = _registries()

    def leaves(cls, prefix: str) -> list[str]:
        out = []
        hints = typing.get_type_hints(cls)
        for name in _field_names(cls):
            nested = None if hints[name] is FrozenDict else _nested_dataclass(hints[name])
            out += leaves(nested, f"{prefix}{name}.") if nested else [f"{prefix}{name}"]
        return out

    keys = []
    for section in _field_names(Config):
        if section == "tasks":
            keys += leaves(TaskConfig, f"tasks.{PLACEHOLDER}.")
        else:
            keys += leaves(typing.get_type_hints(Config)[section], f"{section}.")
    for name in tasks:
        keys += [f"tasks.{name}.options.{o}" for o in _field_names(tasks.get(name).Options)]
    for name in balancers:
        keys += [f"balancing.options.{o}" for o in _field_names(balancers.get(name).Options)]
    return keys


def test_every_key_in_config_doc_exists():
    unknown = sorted(k for k in _keys_written(CONFIG_DOC.read_text()) if not _is_config_key(k))
    assert not unknown, f"docs/config.md names keys the config does not have: {unknown}"


def test_every_config_key_is_documented():
    written = _keys_written(CONFIG_DOC.read_text())
    missing = [key for key in _documented_keys() if key not in written]
    assert not missing, f"docs/config.md does not document: {missing}"


def test_config_doc_covers_every_section():
    headings = {m.group(2).strip() for m in HEADING.finditer(CONFIG_DOC.read_text())}
    assert set(_section_names()) <= headings


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_set_overrides_name_real_keys(page):
    """Every `--set KEY=VALUE` in a page's code names a config key, unless the page shows
    that very key being rejected (an error example)."""
    text = page.read_text()
    keys = {key for line in _code_lines(text) for key in SET_KEY.findall(line)}
    unknown = sorted(k for k in keys
                     if not _is_config_key(k) and f"config key '{k}'" not in text)
    assert not unknown, unknown


def test_key_checks_reject_what_does_not_exist():
    """The checks above can fail: misspelt keys, options of another task, values as sections."""
    assert _is_config_key("server.staleness_policy")
    assert _is_config_key("tasks.<name>.prefetch")
    assert _is_config_key("tasks.segmentation.options.head")
    assert _is_config_key("data.labelled_from.root")
    assert _is_config_key("server.resources.ps_server")
    assert not _is_config_key("optimizer.lrr")
    assert not _is_config_key("tasks.rotation.options.head")
    assert not _is_config_key("tasks.nosuchtask.workers")
    assert not _is_config_key("run.seed.value")
    assert not _is_config_key("balancing.options.nosuchoption")
    assert "server.staleness_policy" in _keys_written("the `server.staleness_policy` key")
    assert "metrics.jsonl" not in _keys_written("a `metrics.jsonl` line")
