"""docs/: the configuration reference is generated from scanqueue/config.py and cannot drift.

The table between the GENERATED markers of docs/configuration.md is rendered
from the settings dataclasses (name, type, default) and the comment on each
field's line in config.py (its meaning). When a setting is added or changed,
regenerate it with

    .venv/bin/python -m tests.unit.test_docs

Other docs are checked for what they promise: every SQL view is described,
every documented command exists, every relative link resolves.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import sys
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest

from scanqueue import cli, config

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CONFIG_DOC = DOCS / "configuration.md"
BEGIN = "<!-- BEGIN GENERATED: settings table (python -m tests.unit.test_docs) -->"
END = "<!-- END GENERATED: settings table -->"

SECTIONS: list[tuple[str, type[Any]]] = [
    ("database", config.DatabaseSettings),
    ("broker", config.BrokerSettings),
    ("scan", config.ScanSettings),
    ("alerts", config.AlertSettings),
    ("rescan", config.RescanSettings),
    ("clusters", config.ClusterSettings),
]


def field_comments() -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment on the field's line in config.py."""
    source = Path(config.__file__).read_text(encoding="utf-8")
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    out: dict[tuple[str, str], str] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    out[(node.name, item.target.id)] = comments.get(item.lineno, "")
    return out


def _type(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " \\| ".join(f'`"{a}"`' for a in typing.get_args(hint))
    if origin is tuple:
        return "list of strings"
    if origin in (types.UnionType, typing.Union):
        raise TypeError(f"unsupported setting type {hint!r}")
    return {str: "string", int: "integer", float: "number", bool: "boolean"}[hint]


def _default(field: dataclasses.Field[Any]) -> str:
    if field.default is dataclasses.MISSING:
        return "required"
    value = field.default
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{v}"' for v in value) + "]`"
    return f"`{value}`"


def render_table() -> str:
    """The settings table, one row per field of every settings section."""
    comments = field_comments()
    rows = [
        "| section | key | environment variable | type | default | meaning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for section, cls in SECTIONS:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if section == "clusters":
                where, env = "`[[clusters]]`", "— (file only)"
            else:
                where, env = f"`[{section}]`", f"`SCANQUEUE_{section.upper()}_{field.name.upper()}`"
            meaning = comments[(cls.__name__, field.name)].replace("|", "\\|").replace("<", "&lt;")
            rows.append(
                f"| {where} | `{field.name}` | {env} | {_type(hints[field.name])} "
                f"| {_default(field)} | {meaning} |"
            )
    return "\n".join(rows)


def _generated_block(text: str) -> str:
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    return text[start:end].strip()


def regenerate() -> None:
    text = CONFIG_DOC.read_text(encoding="utf-8")
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    CONFIG_DOC.write_text(text[:start] + "\n" + render_table() + "\n" + text[end:], "utf-8")


def test_configuration_reference_matches_the_settings_dataclasses() -> None:
    documented = _generated_block(CONFIG_DOC.read_text(encoding="utf-8"))
    assert documented == render_table(), (
        "docs/configuration.md is out of date; run: .venv/bin/python -m tests.unit.test_docs"
    )


def test_configuration_reference_has_a_row_for_every_field() -> None:
    documented = _generated_block(CONFIG_DOC.read_text(encoding="utf-8"))
    for section, cls in SECTIONS:
        for field in dataclasses.fields(cls):
            assert f"| `{field.name}` |" in documented, f"{section}.{field.name}"
    assert set(config._SECTIONS) | {"clusters"} == {s for s, _ in SECTIONS}


def test_every_field_has_a_meaning_comment_in_config_py() -> None:
    comments = field_comments()
    for _, cls in SECTIONS:
        for field in dataclasses.fields(cls):
            assert comments[(cls.__name__, field.name)], f"{cls.__name__}.{field.name}"


def test_documented_environment_variables_are_accepted_by_config() -> None:
    documented = _generated_block(CONFIG_DOC.read_text(encoding="utf-8"))
    for variable in re.findall(r"`(SCANQUEUE_[A-Z_]+)`", documented):
        section, _, key = variable[len("SCANQUEUE_") :].lower().partition("_")
        cls = dict(SECTIONS)[section]
        field = {f.name: f for f in dataclasses.fields(cls)}[key]
        text = _env_text(field)
        settings = config.from_mapping({}, environ={variable: text})
        assert getattr(getattr(settings, section), key) is not None


def _env_text(field: dataclasses.Field[Any]) -> str:
    """A valid environment value for ``field``: its default, spelled as a variable."""
    value = field.default
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def test_the_example_toml_in_the_reference_is_valid() -> None:
    import tomllib

    text = CONFIG_DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)
    assert blocks
    for block in blocks:
        config.from_mapping(tomllib.loads(block), environ={}, source="docs/configuration.md")


def _views_in_migrations() -> set[str]:
    names: set[str] = set()
    for sql in sorted((ROOT / "scanqueue" / "migrations").glob("*.sql")):
        text = sql.read_text(encoding="utf-8")
        names |= set(re.findall(r"CREATE (?:OR REPLACE )?VIEW\s+(\w+)", text, flags=re.I))
        names -= set(re.findall(r"DROP VIEW (?:IF EXISTS )?(\w+)", text, flags=re.I))
    return names


def test_every_sql_view_is_described() -> None:
    text = (DOCS / "views.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^## `(\w+)`", text, flags=re.M))
    assert _views_in_migrations() <= headings
    assert headings <= _views_in_migrations(), "docs/views.md describes a view that is gone"


def _subcommands() -> set[str]:
    parser = cli.build_parser()
    for action in parser._actions:
        if action.choices and isinstance(action.choices, dict):
            return set(action.choices)
    return set()


DOC_FILES = sorted(p for p in DOCS.glob("*.md") if p.name != "design.md")


def _code(text: str) -> list[str]:
    """Fenced code blocks and inline code spans: where commands are written."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL)
    prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    return blocks + re.findall(r"`([^`\n]+)`", prose)


def documented_commands(text: str) -> set[str]:
    """``scanqueue SUBCOMMAND`` as written in code (not ``kubectl -n scanqueue ...``)."""
    found: set[str] = set()
    for code in _code(text):
        for line in code.splitlines():
            if line.lstrip().startswith(("from ", "import ")) or "pg_dump" in line:
                continue  # Python imports; a database named scanqueue
            found |= set(re.findall(r"(?<![-\w/.:])(?<!-n )scanqueue ([a-z][a-z-]*)", line))
    return found


def test_command_finder_sees_commands_and_ignores_namespaces() -> None:
    text = (
        "run `scanqueue explain POD`\n```sh\nkubectl -n scanqueue logs x\nscanqueue report\n"
        "scanqueue frobnicate\n```\n`from scanqueue import logs`"
    )
    assert documented_commands(text) == {"explain", "report", "frobnicate"}


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_documented_scanqueue_commands_exist(path: Path) -> None:
    used = documented_commands(path.read_text(encoding="utf-8"))
    missing = sorted(used - _subcommands())
    assert missing == [], f"{path.name} documents commands scanqueue does not have: {missing}"


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_relative_links_resolve(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (path.parent / target).exists(), f"{path.name} links to missing {target}"


if __name__ == "__main__":
    regenerate()
    print(f"regenerated the settings table in {CONFIG_DOC}", file=sys.stderr)
