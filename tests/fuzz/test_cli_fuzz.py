"""Argument vectors for every command (hostile values for each option, junk in between) through
`tuneloop` in this process: an exit code of 0, 1 or 2 and clean stderr; never an exception."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from fuzz.support import (
    HOSTILE_TEXT,
    HOSTILE_YAML_VALUES,
    REPO,
    assert_clean_text,
    fuzz_settings,
    run_cli,
)

FILES_DIR = REPO / "tests" / "adversarial" / "files"
# Regular files, folders, nothing, and /dev/null (no FIFO and no endless device: those are the
# adversarial corpus's, run in a child process).
FILE_ARGS = [
    str(REPO / "recipes" / "campaigns" / "demo.yaml"),
    str(REPO / "recipes" / "campaigns" / "examples" / "claims-smtj.yaml"),
    str(REPO / "recipes" / "local" / "sft-full.yaml"),
    str(REPO / "recipes" / "nova" / "nova-lite" / "sft-lora.yaml"),
    str(REPO / "tests" / "data" / "corpus" / "sft" / "valid_images.jsonl"),
    str(REPO / "tests" / "data" / "corpus" / "file" / "invalid_json.jsonl"),
    *(str(path) for path in sorted(FILES_DIR.rglob("*.y*ml"))),
    str(FILES_DIR / "datasets" / "empty.jsonl"),
    str(REPO / "recipes"),
    "/dev/null",
    "no-such-file.yaml",
    "",
    "-",
    "a\x00b.yaml",
    "a\nb.yaml",
]
# Campaign status reads the ledger: only local campaigns (an S3 one would go to the network).
STATUS_ARGS = [
    str(REPO / "recipes" / "campaigns" / "demo.yaml"),
    "demo",
    "no-such-campaign",
    "../../../../../../etc/passwd",
    "/dev/null",
    "",
]
NUMBERS = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["0", "-1", "9" * 5000, "1e9", "nan", "inf", "0x10", " 1", "1\n", "½"]),
)
TEXT = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=16))
SET_VALUES = st.one_of(st.sampled_from(HOSTILE_YAML_VALUES), TEXT)
# `local` commands get job folders of the test's own (<jobs> is replaced by one): a hostile
# --root could otherwise name any folder, and `cancel` writes to the job folder it finds.
ROOTS = st.sampled_from(["<jobs>", "<jobs>/missing", "<jobs>/a-file", "/etc/hostname", ""])
DATES = st.one_of(
    st.dates().map(str), st.sampled_from(["9999-12-31", "0001-01-01", "2026-13-45", "today"])
)


def _option(name: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return st.one_of(values.map(lambda value: [name, value]), values.map(lambda v: [f"{name}={v}"]))


def _command(
    words: list[str],
    positional: st.SearchStrategy[list[str]],
    *options: st.SearchStrategy[list[str]],
) -> st.SearchStrategy[list[str]]:
    chosen = st.lists(st.one_of(*options), max_size=4) if options else st.just([])
    return st.builds(
        lambda first, rest: [*words, *first, *(arg for option in rest for arg in option)],
        positional,
        chosen,
    )


def _flag(name: str) -> st.SearchStrategy[list[str]]:
    return st.just([name])


ONE_FILE = st.sampled_from(FILE_ARGS).map(lambda path: [path])
RECIPE_CONTEXT = [
    _option("--platform", st.one_of(st.sampled_from(["hyperpod", "smtj", "local"]), TEXT)),
    _option("--instance-type", TEXT),
    _option("--kind", st.one_of(st.sampled_from(["sft", "cpt", "rft", "eval"]), TEXT)),
    _flag("--template"),
]
COMMANDS = st.one_of(
    _command(
        ["recipe", "render"],
        ONE_FILE,
        _option("--set", st.builds("{}={}".format, TEXT, SET_VALUES)),
        *RECIPE_CONTEXT,
    ),
    _command(
        ["recipe", "validate"],
        st.lists(st.sampled_from(FILE_ARGS), min_size=1, max_size=3),
        *RECIPE_CONTEXT,
    ),
    _command(
        ["recipe", "fields"],
        st.one_of(st.sampled_from(["sft", "cpt", "rft", "eval"]), TEXT).map(lambda k: [k]),
        _option("--model", TEXT),
    ),
    _command(
        ["data", "validate"],
        ONE_FILE,
        _option("--format", st.one_of(st.sampled_from(["sft", "cpt", "rft", "gen_qa"]), TEXT)),
        _option("--model", st.one_of(st.sampled_from(["lite", "lite-2", "micro"]), TEXT)),
        _option("--platform", st.one_of(st.sampled_from(["sagemaker", "bedrock"]), TEXT)),
        _option("--max-length", NUMBERS),
        _option("--max-errors", NUMBERS),
        _option("--allow", TEXT),
        _option("--role", TEXT),
        # One worker or a refused count: a pool of processes per example would be slow.
        _option("--workers", st.sampled_from(["1", "-1", "x", "9" * 5000])),
        _flag("--json"),
    ),
    _command(["data", "rules"], st.just([])),
    _command(
        ["campaign", "validate"],
        ONE_FILE.map(lambda args: [*args, "--offline"]),
        _option("--round", NUMBERS),
        _option("--ds", DATES),
        _flag("--json"),
        _flag("-q"),
    ),
    _command(
        ["campaign", "status"], st.sampled_from(STATUS_ARGS).map(lambda a: [a]), _flag("--json")
    ),
    _command(
        ["local", "status"],
        TEXT.map(lambda name: [name]),
        _flag("--json"),
        _option("--root", ROOTS),
    ),
    _command(["local", "logs"], TEXT.map(lambda name: [name]), _option("--root", ROOTS)),
    _command(
        ["local", "cancel"],
        TEXT.map(lambda name: [name]),
        _option("--grace", NUMBERS),
        _option("--root", ROOTS),
    ),
)


@st.composite
def argument_vectors(draw: st.DrawFn) -> list[str]:
    """A command's arguments, sometimes with junk spliced in."""
    argv = draw(COMMANDS)
    for _ in range(draw(st.integers(0, 2))):
        junk = draw(
            st.one_of(TEXT, st.sampled_from(["--", "-x", "--no-such-option", "-h"])).filter(
                lambda word: word != "run"  # never `local run`: it starts jobs
            )
        )
        argv.insert(draw(st.integers(0, len(argv))), junk)
    return argv


@pytest.fixture(scope="module")
def jobs_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty jobs folder, also $TUNELOOP_LOCAL_ROOT: no job is found, none is touched."""
    root = tmp_path_factory.mktemp("local-jobs")
    (root / "a-file").write_text("not a folder")
    patch = pytest.MonkeyPatch()
    patch.setenv("TUNELOOP_LOCAL_ROOT", str(root))
    yield root
    patch.undo()


@fuzz_settings()
@given(argv=argument_vectors())
def test_any_argument_vector_exits_cleanly(jobs_root: Path, argv: list[str]) -> None:
    argv = [arg.replace("<jobs>", str(jobs_root)) for arg in argv]
    code, _, err = run_cli(argv)
    event(f"exit {code}")
    assert code in (0, 1, 2), (code, err[-2000:])
    assert_clean_text(err)
