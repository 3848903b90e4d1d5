"""Hostile campaign and recipe files: every one is a single located line and exit 2, never a
traceback, a hang or a runaway process.

Each case goes through the public loaders in-process (`load_campaign`, the path a round's
plan_round takes, and `load_document` / `render_recipe`, the path of every recipe), and a few
through the console script in a subprocess with an address-space limit, where a blow-up would
show as a crash instead of taking the machine down.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tuneloop.cli.main import main
from tuneloop.config.file import load_campaign
from tuneloop.config.templating import sample_template_context
from tuneloop.documents import (
    MAX_DEPTH,
    MAX_DOCUMENT_BYTES,
    MAX_NODES,
    MAX_PROBLEMS,
    format_loc,
    load_document,
    parse_document,
    parse_loc,
    parse_scalar,
    read_config_text,
)
from tuneloop.errors import CampaignError, ConfigError, Problem
from tuneloop.recipes.catalog import Platform
from tuneloop.recipes.render import render_recipe
from tuneloop.recipes.rules import RecipeContext
from tuneloop.rounds.plan import validate_campaign

REPO = Path(__file__).resolve().parents[2]
CAMPAIGN = (REPO / "recipes" / "campaigns" / "demo.yaml").read_text(encoding="utf-8")
RECIPE = (REPO / "recipes" / "local" / "sft-lora.yaml").read_text(encoding="utf-8")
CAMPAIGN_LINES = CAMPAIGN.count("\n")
RECIPE_LINES = RECIPE.count("\n")
ADDRESS_SPACE = 2_000_000_000
"""What a CLI run may map: a 100 MB file read whole, or an alias bomb expanded, would pass it."""

BILLION_LAUGHS = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10)
)


def campaign_problems(tmp_path: Path, extra: str, *, first: bool = False) -> list[Problem]:
    """The problems of the demo campaign with ``extra`` appended (or put first)."""
    path = tmp_path / "campaign.yaml"
    path.write_text(extra + CAMPAIGN if first else CAMPAIGN + extra, encoding="utf-8")
    with pytest.raises(CampaignError) as refused:
        load_campaign(path)
    return refused.value.problems


def recipe_problems(tmp_path: Path, extra: str, *, first: bool = False) -> list[Problem]:
    """The problems of a local SFT recipe with ``extra`` appended (or put first), rendered."""
    path = tmp_path / "recipe.yaml"
    path.write_text(extra + RECIPE if first else RECIPE + extra, encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        render_recipe(path, context=RecipeContext(platform=Platform.LOCAL, template=True))
    return refused.value.problems


def the_one(problems: list[Problem]) -> Problem:
    """The single problem, checked to format as one bounded line."""
    assert len(problems) == 1, [p.format() for p in problems]
    [problem] = problems
    text = problem.format()
    assert "\n" not in text and "\r" not in text and len(text) < 600, text
    return problem


def both(tmp_path: Path, extra: str, *, first: bool = False) -> tuple[Problem, Problem]:
    """The one problem of the campaign and of the recipe carrying ``extra``."""
    campaign = the_one(campaign_problems(tmp_path, extra, first=first))
    recipe = the_one(recipe_problems(tmp_path, extra, first=first))
    return campaign, recipe


# --- keys -------------------------------------------------------------------------------------


def test_a_key_named_int_is_an_unknown_field_at_its_line(tmp_path: Path) -> None:
    campaign, recipe = both(tmp_path, "int: 1\n")
    assert (campaign.path, campaign.line) == ("int", CAMPAIGN_LINES + 1)
    assert (recipe.path, recipe.line) == ("int", RECIPE_LINES + 1)
    assert campaign.message == recipe.message == "unknown field"


@pytest.mark.parametrize("key", ["a[0]", "[", "]", "a]b[", 'say "hi"'])
def test_a_key_with_brackets_or_quotes_keeps_its_name_and_line(tmp_path: Path, key: str) -> None:
    quoted = "'" + key.replace("'", "''") + "'"
    campaign, recipe = both(tmp_path, f"{quoted}: 1\n")
    for problem, line in ((campaign, CAMPAIGN_LINES + 1), (recipe, RECIPE_LINES + 1)):
        assert parse_loc(problem.path) == (key,)
        assert problem.line == line
        assert problem.message == "unknown field"


def test_an_empty_key_is_named_and_located(tmp_path: Path) -> None:
    campaign, recipe = both(tmp_path, "'': 1\n")
    assert (campaign.path, campaign.line) == ('[""]', CAMPAIGN_LINES + 1)
    assert (recipe.path, recipe.line) == ('[""]', RECIPE_LINES + 1)


@pytest.mark.parametrize(
    "key,reads_as",
    [("~", "null"), ("null", "null"), ("5", "a number"), ("1.5", "a number"), ("yes", "true")],
)
def test_a_key_that_is_not_text_is_refused_with_the_quoting_fix(
    tmp_path: Path, key: str, reads_as: str
) -> None:
    campaign, recipe = both(tmp_path, f"{key}: 1\n")
    for problem, line in ((campaign, CAMPAIGN_LINES + 1), (recipe, RECIPE_LINES + 1)):
        assert problem.line == line
        assert f"the key {key!r} reads as {reads_as}" in problem.message
        assert problem.fix is not None and f'quote it ("{key}")' in problem.fix


def test_a_key_with_a_line_break_stays_on_one_line(tmp_path: Path) -> None:
    campaign, recipe = both(tmp_path, '"a\\nb\\u2028c": 1\n')
    assert campaign.path == recipe.path == '["a\\nb\\u2028c"]'
    assert parse_loc(campaign.path) == ("a\nb\u2028c",)


def test_a_very_long_key_is_shown_cut(tmp_path: Path) -> None:
    long_key = "k" * 50_000
    campaign, recipe = both(tmp_path, f"? {long_key}\n: 1\n")
    for problem in (campaign, recipe):
        assert problem.message == "unknown field"
        assert problem.path.startswith('["kkk') and problem.path.endswith('..."]')
        assert len(problem.path) < 100


def test_a_complex_key_is_refused(tmp_path: Path) -> None:
    campaign, recipe = both(tmp_path, "? [a, b]\n: 1\n", first=True)
    for problem in (campaign, recipe):
        assert problem.line == 1
        assert problem.message == "a key must be a plain name, not a list or mapping"


def test_format_loc_and_parse_loc_round_trip_odd_keys() -> None:
    for loc in [
        ("stages", 1, "recipe"),
        ("a[0]", 3, ""),
        ("x", 'q"uo\\te', "\x00\x85"),
        ("stages", 0, "overrides", "training_config.max_steps"),
    ]:
        text = format_loc(loc)
        assert text.isprintable() and text.isascii()
        if "." not in "".join(str(part) for part in loc):
            assert parse_loc(text) == loc
    # Dotted override keys print as they always did.
    assert format_loc(("stages", 0, "overrides", "a.b")) == "stages[0].overrides.a.b"


# --- values -----------------------------------------------------------------------------------


def test_an_impossible_date_is_refused_at_its_line(tmp_path: Path) -> None:
    campaign = the_one(campaign_problems(tmp_path, "start_date: 2026-13-45\n"))
    assert (campaign.path, campaign.line) == ("start_date", CAMPAIGN_LINES + 1)
    assert "cannot read '2026-13-45'" in campaign.message


@pytest.mark.parametrize(
    "value",
    ["9" * 5000, "-" + "9" * 5000, "0x" + "f" * 5000, "0b" + "1" * 20_000, "1" + ":59" * 3000],
    ids=["decimal", "negative", "hexadecimal", "binary", "base-60"],
)
def test_an_integer_of_thousands_of_digits_is_refused(tmp_path: Path, value: str) -> None:
    campaign, recipe = both(tmp_path, f"huge: {value}\n")
    for problem in (campaign, recipe):
        assert problem.path == "huge"
        assert "digits is too large (at most 100)" in problem.message


def test_a_big_integer_from_set_is_one_line_per_field_and_never_printed_whole(capsys) -> None:
    recipe = str(REPO / "recipes" / "local" / "sft-lora.yaml")
    for value in ("9" * 5000, "0x" + "f" * 5000):
        code = main(
            [
                "recipe",
                "render",
                recipe,
                "--template",
                "--set",
                f"training_config.max_steps={value}",
            ]
        )
        out, err = capsys.readouterr()
        assert code == 2 and out == ""
        assert err.strip() and "Traceback" not in err
        assert all(len(line) < 600 for line in err.splitlines())


def test_parse_scalar_refuses_a_huge_value_when_it_knows_the_key() -> None:
    assert parse_scalar("0x" + "f" * 5000) == "0x" + "f" * 5000  # no key: it stays text
    with pytest.raises(ConfigError) as refused:
        parse_scalar("0x" + "f" * 5000, name="training_config.max_steps")
    problem = the_one(refused.value.problems)
    assert (problem.source, problem.path) == ("--set", "training_config.max_steps")
    assert "at most 100" in problem.message
    levels = ["&l0 [" + ", ".join(["x"] * 10) + "]"] + [
        f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)
    ]
    bomb = "[" + ", ".join(levels) + "]"
    assert parse_scalar(bomb) == bomb  # text, never a billion values for a model to walk
    assert parse_scalar("[" * 5000) == "[" * 5000
    assert parse_scalar("1e-5") == 1e-5 and parse_scalar("") is None  # as before


@pytest.mark.parametrize(
    "tagged",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object/new:os.system ['touch {marker}']",
        "!!python/name:os.system",
        "!custom {{command: 'touch {marker}'}}",
    ],
)
def test_python_and_unknown_tags_are_refused_and_never_run(tmp_path: Path, tagged: str) -> None:
    marker = tmp_path / "ran"
    campaign, recipe = both(tmp_path, f"x: {tagged.format(marker=marker)}\n")
    for problem in (campaign, recipe):
        assert problem.path == "x"
        assert "could not determine a constructor" in problem.message
    assert not marker.exists()


# --- aliases and nesting ----------------------------------------------------------------------


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    campaign, recipe = both(tmp_path, "name_list: &a [*a]\n")
    for problem in (campaign, recipe):
        assert problem.path == "name_list[0]"
        assert problem.message == "a recursive alias: this value contains itself"


def test_a_recursive_alias_used_many_times_is_one_problem(tmp_path: Path) -> None:
    campaign, recipe = both(tmp_path, "loop: &a [*a, *a, *a, *a]\nmore: [*a, *a]\n")
    assert "recursive alias" in campaign.message and "recursive alias" in recipe.message


def test_a_billion_laughs_alias_bomb_is_refused(tmp_path: Path) -> None:
    campaign, recipe = both(tmp_path, BILLION_LAUGHS)
    for problem in (campaign, recipe):
        assert f"more than {MAX_NODES:,} values once aliases (*name) are expanded" in (
            problem.message
        )
        assert problem.fix


def test_a_merge_key_bomb_is_refused(tmp_path: Path) -> None:
    bomb = "m0: &m0 {x: 1}\n" + "".join(
        f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}], y{i}: 1}}\n" for i in range(1, 10)
    )
    campaign, recipe = both(tmp_path, bomb)
    assert "values once aliases" in campaign.message and "values once aliases" in recipe.message


@pytest.mark.parametrize(
    "nested",
    [
        "[" * 5000 + "]" * 5000,
        "{a: " * 5000 + "1" + "}" * 5000,
        "[" * 5000,  # never closed: refused before the parser reaches the end
        "".join(f"\n{'  ' * (i + 1)}k{i}:" for i in range(100)) + " 1",
    ],
    ids=["lists", "mappings", "unclosed", "block"],
)
def test_deep_nesting_is_refused(tmp_path: Path, nested: str) -> None:
    campaign, recipe = both(tmp_path, f"deep: {nested}\n")
    for problem in (campaign, recipe):
        assert problem.message == f"values nest more than {MAX_DEPTH} levels deep"
        assert problem.path.startswith("deep")
        assert problem.fix


def test_nesting_through_aliases_is_refused(tmp_path: Path) -> None:
    chain = "c0: &c0 [1]\n" + "".join(f"c{i}: &c{i} [*c{i - 1}]\n" for i in range(1, 300))
    campaign, recipe = both(tmp_path, chain)
    for problem in (campaign, recipe):
        assert problem.message.startswith(f"values nest more than {MAX_DEPTH} levels deep")


def test_nesting_to_the_limit_is_still_read() -> None:
    text = "deep: " + "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1) + "\n"
    value = parse_document(text, "ok.yaml").data["deep"]
    for _ in range(MAX_DEPTH - 1):
        value = value[0]
    assert value == 1


def test_a_file_of_too_many_values_is_refused() -> None:
    text = "x: [" + "1," * (MAX_NODES + 10) + "1]\n"
    with pytest.raises(ConfigError) as refused:
        parse_document(text, "many.yaml")
    problem = the_one(refused.value.problems)
    assert problem.message == f"more than {MAX_NODES:,} values in one file"


def test_thousands_of_mistakes_are_listed_up_to_a_cap() -> None:
    text = "".join(f"k: {i}\n" for i in range(MAX_PROBLEMS + 30))
    with pytest.raises(ConfigError) as refused:
        parse_document(text, "dup.yaml")
    problems = refused.value.problems
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1].message == "and 29 more problems"


# --- the file itself --------------------------------------------------------------------------


def test_a_100_megabyte_file_is_refused_by_its_size(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as handle:
        handle.truncate(100 * 1024 * 1024)  # sparse: nothing is written, nothing must be read
    for problems in _load_both(big):
        problem = the_one(problems)
        assert problem.message == (
            f"the file is 104,857,600 bytes; a campaign or recipe may have at most "
            f"{MAX_DOCUMENT_BYTES:,}"
        )


def test_a_file_without_a_size_is_read_only_up_to_the_cap() -> None:
    # /proc files report size 0: the cap holds on what is read, not on what stat said.
    with pytest.raises(ConfigError) as refused:
        read_config_text("/proc/self/status", limit=16)
    assert the_one(refused.value.problems).message.startswith("the file is more than 16 bytes")


def test_a_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    for problems in _load_both(folder):
        assert the_one(problems).message == "a folder; a campaign or recipe is a YAML file"


def test_a_missing_file_is_still_file_not_found(tmp_path: Path) -> None:
    for problems in _load_both(tmp_path / "nope.yaml"):
        assert the_one(problems).message == "file not found"


def test_a_name_with_a_nul_character_is_refused(tmp_path: Path) -> None:
    for problems in _load_both(tmp_path / "a\x00b.yaml"):
        problem = the_one(problems)
        assert problem.message == "cannot read file: its name holds a NUL character"
        assert "\x00" not in problem.format()


def test_invalid_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: demo\ndescription: caf\xe9\n")
    for problems in _load_both(path):
        problem = the_one(problems)
        assert problem.line == 2
        assert problem.message.startswith("not UTF-8 text: byte 0xe9")
        assert problem.fix == "save the file as UTF-8"


def test_a_nul_byte_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "nul.yaml"
    path.write_bytes(b"name: demo\ndescription: a\x00b\n")
    for problems in _load_both(path):
        problem = the_one(problems)
        assert problem.line == 2
        assert "'\\x00' is not allowed" in problem.message


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + CAMPAIGN.encode())
    campaign = load_campaign(path)
    assert campaign.campaign.name == "demo"
    assert campaign.line("name") == CAMPAIGN.splitlines().index("name: demo") + 1


@pytest.mark.parametrize(
    "text,message",
    [
        ("- a\n- b\n", "the top level must be a mapping of keys to values"),
        ("just text\n", "the top level must be a mapping of keys to values"),
        ("", "the file is empty"),
        ("# nothing\n", "the file is empty"),
    ],
)
def test_a_top_level_that_is_not_a_mapping(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "top.yaml"
    path.write_text(text, encoding="utf-8")
    for problems in _load_both(path):
        assert the_one(problems).message == message


def test_text_handed_over_whole_is_capped_too() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_document("a: 1\n" + "#" * MAX_DOCUMENT_BYTES, "big.yaml")
    assert "a campaign or recipe may have at most" in the_one(refused.value.problems).message


def _load_both(path: Path) -> list[list[Problem]]:
    """The problems of ``path`` read as a campaign and as a recipe document."""
    found = []
    with pytest.raises(CampaignError) as as_campaign:
        load_campaign(path)
    found.append(as_campaign.value.problems)
    with pytest.raises(ConfigError) as as_recipe:
        load_document(path)
    found.append(as_recipe.value.problems)
    return found


# --- a stage's recipe, as plan_round reads it -------------------------------------------------


def test_a_hostile_stage_recipe_is_one_problem_when_the_round_is_planned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipes = tmp_path / "recipes"
    shutil.copytree(REPO / "recipes" / "local", recipes / "local")
    (recipes / "local" / "sft-full.yaml").write_text(RECIPE + BILLION_LAUGHS, encoding="utf-8")
    monkeypatch.setenv("TUNELOOP_RECIPES_DIR", str(recipes))
    monkeypatch.setenv("TUNELOOP_RECIPE_ROOTS", str(recipes))
    campaign_path = recipes / "campaign.yaml"
    campaign_path.write_text(CAMPAIGN, encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        validate_campaign(
            load_campaign(campaign_path), template_context=sample_template_context(None)
        )
    problem = the_one(refused.value.problems)
    assert problem.source.endswith("sft-full.yaml")
    assert "values once aliases (*name) are expanded" in problem.message


# --- through the console script ---------------------------------------------------------------


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuneloop.cli", *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO / "plugins")},
        preexec_fn=_limit_address_space,
        timeout=120,  # generous: each case takes about a second; a hang must not stall the suite
        stdin=subprocess.DEVNULL,
    )


def _hostile_file(tmp_path: Path, case: str, base: str) -> Path:
    path = tmp_path / f"{case}.yaml"
    if case == "fifo":
        os.mkfifo(path)
    elif case == "dev-zero":
        path.symlink_to("/dev/zero")
    elif case == "100mb":
        with path.open("wb") as handle:
            handle.truncate(100 * 1024 * 1024)
    else:
        extra = {
            "alias-bomb": BILLION_LAUGHS,
            "deep": "deep: " + "[" * 5000 + "]" * 5000 + "\n",
            "big-int": "huge: 0x" + "f" * 5000 + "\n",
            "python-tag": "x: !!python/object/apply:os.system ['true']\n",
            "int-key": "int: 1\n'a[0]': 2\n",
        }[case]
        path.write_text(base + extra, encoding="utf-8")
    return path


CLI_CASES = ["fifo", "dev-zero", "100mb", "alias-bomb", "deep", "big-int", "python-tag"]


@pytest.mark.parametrize("case", CLI_CASES)
@pytest.mark.parametrize(
    "command", [("campaign", "validate", "--offline"), ("recipe", "render", "--template")]
)
def test_the_console_script_gives_one_line_and_exit_2(
    tmp_path: Path, case: str, command: tuple[str, ...]
) -> None:
    base = CAMPAIGN if command[0] == "campaign" else RECIPE
    path = _hostile_file(tmp_path, case, base)
    result = _cli(*command, str(path))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines[:5]
    assert lines[0].startswith(str(path)) and len(lines[0]) < 600
    assert result.stdout == ""


def test_the_console_script_reports_odd_keys_one_line_each(tmp_path: Path) -> None:
    path = _hostile_file(tmp_path, "int-key", CAMPAIGN)
    result = _cli("campaign", "validate", "--offline", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert [line.split(": ")[1] for line in lines] == ["int", '["a[0]"]']
    assert [line.split(": ")[0] for line in lines] == [
        f"{path}:{CAMPAIGN_LINES + 1}",
        f"{path}:{CAMPAIGN_LINES + 2}",
    ]
