"""The README is the front door and docs/ the manual: every Python example on them runs as
written, every page is reachable and every relative link lands on a file (and heading) that
exists, every CLI command and option is documented, the error tree on its page is the one in the
code, and the README names the test command .ci/run calls.

Examples run per page: the ```python blocks of one page, in order, as one script (a later block
may use what an earlier one defined), in a fresh working folder, without STORAGE_* variables.
A block fenced as ```python no-run is shown but not run (none is, today: keep it that way where
you can). Of the other fences (bash, text, sql, toml), only the session commands of docs/cli.md
are run.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import kvsessions
from kvsessions.cli.main import build_parser
from kvsessions.errors import KVSessionsError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", flags=re.S | re.M)
_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")

# Runs the blocks of one page in this interpreter's __main__ namespace (so that, as in a real
# script, "__main__:Name" finds what a block defined), naming the block that failed.
_RUNNER = """
import json, sys, traceback
_blocks = json.loads(sys.stdin.read())
for _line, _code in _blocks:
    try:
        exec(compile(_code, f"<block at line {_line}>", "exec"), globals())
    except BaseException:
        traceback.print_exc()
        print(f"example block at line {_line} failed", file=sys.stderr)
        sys.exit(1)
"""


def relative(page: Path) -> str:
    return str(page.relative_to(ROOT))


def code_blocks(page: Path) -> list[tuple[str, int, str]]:
    """(fence info string, line number of the fence, code) for every fenced block."""
    text = page.read_text(encoding="utf-8")
    return [(match.group(1).strip(), text.count("\n", 0, match.start()) + 1, match.group(2))
            for match in _FENCE.finditer(text)]


def python_blocks(page: Path) -> list[tuple[int, str]]:
    return [(line, code) for info, line, code in code_blocks(page)
            if info.split()[:1] == ["python"] and "no-run" not in info.split()]


def with_test_servers(code: str) -> str:
    if "mongodb://127.0.0.1:27017" in code:
        # The docs say "a MongoDB on its usual port"; the tests run theirs on a free port.
        from urllib.parse import urlsplit

        from tests.mongo_server import mongodb_url
        server = urlsplit(mongodb_url())
        code = code.replace("mongodb://127.0.0.1:27017", f"{server.scheme}://{server.netloc}")
    return code


def example_env() -> dict[str, str]:
    """This environment without STORAGE_* settings, with this checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORAGE_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def prose(page: Path) -> str:
    """The page without its fenced blocks (links inside code are not links)."""
    return _FENCE.sub("", page.read_text(encoding="utf-8"))


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of a page."""
    anchors: set[str] = set()
    for line in prose(page).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            repeat = 0
            while (f"{slug}-{repeat}" if repeat else slug) in anchors:
                repeat += 1
            anchors.add(f"{slug}-{repeat}" if repeat else slug)
    return anchors


def cli_commands() -> dict[str, list[str]]:
    """Every sub-command with its option strings."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    choices = subparsers.choices
    assert isinstance(choices, dict)
    return {name: sorted(s for action in sub._actions for s in action.option_strings
                         if s not in ("-h", "--help"))
            for name, sub in sorted(choices.items())}


# ---------------------------------------------------------------------------- examples

def test_the_manual_has_its_pages() -> None:
    names = {page.name for page in PAGES}
    for name in ("index.md", "sessions.md", "stores.md", "caching.md", "migration.md",
                 "durability.md", "security.md", "contract.md", "errors.md", "cli.md",
                 "benchmarks.md", "layout.md"):
        assert name in names, f"docs/{name} is missing"
    assert sum(len(python_blocks(page)) for page in PAGES) >= 20


def test_readme_is_a_front_door() -> None:
    assert len(README.read_bytes()) < 10_000, "README.md should stay under 10 KB"
    assert python_blocks(README), "the README needs its quick start"


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=relative)
def test_python_examples_run(page: Path, tmp_path: Path) -> None:
    blocks = [(line, with_test_servers(code)) for line, code in python_blocks(page)]
    result = subprocess.run([sys.executable, "-c", _RUNNER], input=json.dumps(blocks),
                            cwd=tmp_path, env=example_env(), text=True, capture_output=True,
                            timeout=300)
    assert result.returncode == 0, f"{relative(page)}:\n{result.stdout}\n{result.stderr}"
    # A relative SQLite URL lands in the working folder, as the stores page says.
    for name in sorted({name for _, code in blocks for name in _RELATIVE_SQLITE.findall(code)}):
        assert (tmp_path / name).is_file(), f"{relative(page)}: sqlite:///{name} is not ./{name}"


#: A relative SQLite URL in an example: sqlite:/// then no further slash, variable or :memory:.
_RELATIVE_SQLITE = re.compile(r"sqlite:///(?![/:{$])([^\"'?\s#]+)")


def test_some_example_uses_a_relative_sqlite_url() -> None:
    found = [page for page in PAGES for _, code in python_blocks(page)
             if _RELATIVE_SQLITE.search(code)]
    assert DOCS / "stores.md" in found


def test_quick_start_writes_where_it_says(tmp_path: Path) -> None:
    """The README says its quick start writes sessions.db in the working folder."""
    _, code = python_blocks(README)[0]
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=example_env(),
                            text=True,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "sessions.db").is_file()
    assert "['Hello!', 'Hi there!']" in result.stdout


def test_cli_session_examples_run(tmp_path: Path) -> None:
    """The session commands of docs/cli.md, line by line, in a fresh working folder; SESSION_ID
    becomes the first session `ls` lists. `demo` must write ./sessions.db, as the page says."""
    block = next(code for info, _, code in code_blocks(DOCS / "cli.md")
                 if info == "bash" and "kvsessions demo" in code)
    env = example_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    session_id = None
    for line in block.splitlines():
        command = line.split("#", 1)[0].strip()
        if not command:
            continue
        if "SESSION_ID" in command:
            assert session_id is not None, "an `ls` example must come before `show`"
            command = command.replace("SESSION_ID", session_id)
        result = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, text=True,
                                capture_output=True, timeout=120)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        if command.startswith("kvsessions demo"):
            assert (tmp_path / "sessions.db").is_file(), "demo must write ./sessions.db"
        if command.startswith("kvsessions ls") and session_id is None:
            session_id = result.stdout.splitlines()[2].split()[0]
    assert session_id is not None


# ---------------------------------------------------------------------------- links

@pytest.mark.parametrize("page", PAGES, ids=relative)
def test_relative_links_point_at_files_and_headings_that_exist(page: Path) -> None:
    broken = []
    for target in _LINK.findall(prose(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {relative(linked)}")
    assert not broken, f"{relative(page)}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme_or_the_index() -> None:
    linked: set[Path] = set()
    for page in (README, DOCS / "index.md"):
        for target in _LINK.findall(prose(page)):
            linked.add((page.parent / target.partition("#")[0]).resolve())
    missing = [relative(page) for page in PAGES[1:] if page.resolve() not in linked]
    assert not missing, f"not linked from README.md or docs/index.md: {missing}"


# ---------------------------------------------------------------------------- facts

@pytest.mark.parametrize(("command", "options"), cli_commands().items(),
                         ids=list(cli_commands()))
def test_every_cli_command_and_option_is_documented(command: str, options: list[str]) -> None:
    cli_page = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert re.search(rf"kvsessions {command}\b", cli_page), f"`kvsessions {command}` not in cli.md"
    if command == "demo":  # the top-level options, once
        options = options + [s for action in build_parser()._actions
                             for s in action.option_strings if s not in ("-h", "--help")]
    undocumented = [option for option in options
                    if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", cli_page)]
    assert not undocumented, f"options of `kvsessions {command}` not in cli.md: {undocumented}"


def error_classes() -> dict[str, type[KVSessionsError]]:
    """Every KVSessionsError subclass defined in the package."""
    for module in pkgutil.walk_packages(kvsessions.__path__, "kvsessions."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found: dict[str, type[KVSessionsError]] = {}
    pending: list[type[KVSessionsError]] = [KVSessionsError]
    while pending:
        cls = pending.pop()
        if cls.__module__.startswith("kvsessions."):
            found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found


def test_the_error_tree_is_on_one_page_and_matches_the_code() -> None:
    page = (DOCS / "errors.md").read_text(encoding="utf-8")
    tree = next(code for info, _, code in code_blocks(DOCS / "errors.md") if info == "text")
    parents: dict[str, str | None] = {}
    builtins: dict[str, set[str]] = {}
    stack: list[tuple[int, str]] = []
    for line in tree.splitlines():
        match = re.match(r"^([│ ├└─]*)(\w+)(?: \(([\w, ]+)\))?", line)
        assert match, line
        depth, name = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        builtins[name] = set((match.group(3) or "").replace(" ", "").split(",")) - {""}
        stack.append((depth, name))
    classes = error_classes()
    assert sorted(parents) == sorted(classes), "docs/errors.md must list every error class"
    for name, cls in classes.items():
        ours = [base.__name__ for base in cls.__bases__ if issubclass(base, KVSessionsError)]
        others = {base.__name__ for base in cls.__bases__
                  if not issubclass(base, KVSessionsError)} - {"Exception"}
        assert ours == ([parents[name]] if parents[name] else []), name
        assert others == builtins[name], name
    assert "KVSessionsError" in page
    for other in PAGES:
        if other.name != "errors.md":
            assert "├── " not in other.read_text(encoding="utf-8"), \
                f"{relative(other)} repeats the error tree: link to docs/errors.md instead"


def test_the_contract_is_on_one_page() -> None:
    """Other pages link to docs/contract.md instead of restating the contract."""
    statement = 'scan(prefix="", *, start_after=None'
    holders = [relative(page) for page in PAGES if statement in page.read_text(encoding="utf-8")]
    assert holders == ["docs/contract.md"]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    readme = README.read_text(encoding="utf-8")
    assert "bash scripts/test.sh" in ci
    assert "bash scripts/test.sh" in readme
    assert "bash scripts/demo.sh" in readme
