"""Templates in campaign values cannot hang a round, exhaust its memory or read a file.

Each hostile value gives one ValueError line (which callers turn into a located problem); the
limits hold by construction (no loops or macros, sizes checked before a value is built), so no
test here depends on the machine's speed: the time and memory bounds are checked in a
subprocess under an address-space limit, with a bound far above what the cases take.
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml

from tuneloop.cli.main import main
from tuneloop.config.templating import (
    MAX_ITEMS,
    MAX_OUTPUT_CHARS,
    MAX_TEMPLATE_CHARS,
    render_template,
    sample_template_context,
)

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "recipes" / "campaigns" / "demo.yaml"
CONTEXT = sample_template_context(date(2026, 3, 9))

HOSTILE: dict[str, tuple[str, str]] = {
    # name: (template, what the message says)
    "huge range": ("s3://b/{{ range(10**9) }}/x.jsonl", r"range\(\) of 1,000,000,000 numbers"),
    "endless range": ("{{ range(10**100)|list }}", r"10 \*\* 100 is a number of about 332 bits"),
    "string times a huge number": ("s3://b/{{ 'a' * 10**10 }}", r"repeated 10,000,000,000 times"),
    "list times a huge number": ("{{ [1, 2] * 10**6 }}", r"2 items repeated 1,000,000 times"),
    "tower of powers": ("{{ 10**10**10 }}", r"bits \(at most 256\)"),
    "big power": ("{{ 7 ** 100000 }}", r"7 \*\* 100000"),
    "self-calling macro": (
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        r"\{% macro %\} is not allowed",
    ),
    "include a file": ("{% include '/etc/passwd' %}", r"\{% include %\} is not allowed"),
    "import a file": ("{% import '/etc/passwd' as p %}", r"\{% import %\} is not allowed"),
    "from import": ("{% from '/etc/passwd' import x %}", r"\{% from %\} is not allowed"),
    "extends a file": ("{% extends '/etc/passwd' %}", r"\{% extends %\} is not allowed"),
    "nested loops": (
        "{% for a in range(10000) %}{% for b in range(10000) %}x{% endfor %}{% endfor %}",
        r"\{% for %\} is not allowed",
    ),
    "call block": (
        "{% call range(3) %}x{% endcall %}",
        r"\{% call %\} is not allowed",
    ),
    "filter block": ("{% filter upper %}x{% endfilter %}", r"\{% filter %\} is not allowed"),
    "center filter width": ("{{ 'a'|center(10**9) }}", r"center\(\) was given 1,000,000,000"),
    "center method width": ("{{ ds.center(10**9) }}", r"center\(\) was given 1,000,000,000"),
    "zfill width": ("{{ ds.zfill(10**8) }}", r"zfill\(\) was given 100,000,000"),
    "slice count": ("{{ [1]|slice(10**9)|list }}", r"slice\(\) was given"),
    "percent width": ("{{ '%1000000000s' % 'a' }}", r"width or precision over 4,096"),
    "percent star": ("{{ '%*s' % (10**9, 'a') }}", r"width or precision over 4,096"),
    "format filter width": ("{{ '%1000000000s'|format('a') }}", r"width or precision"),
    "str.format width": ("{{ '{:>1000000000}'.format('a') }}", r"width or precision"),
    "str.format nested width": ("{{ '{:>{w}}'.format('a', w=10**9) }}", r"width or precision"),
    "replace blow-up": (
        "{{ ('a' * 4096)|replace('a', 'a' * 4096)|replace('a', 'a' * 4096) }}",
        r"a string of 16,777,216 characters \(at most 4,096\)",
    ),
    "indent blow-up": (
        "{{ ('\n' * 4000)|indent(4096, blank=True) }}",
        r"characters \(at most 4,096\)",
    ),
    "join of a long list": ("{{ range(4096)|map('string')|join(',') }}", r"a string of 19,"),
    "long output": ("{% set x = 'a' * 4096 %}{{ x ~ x ~ x ~ x }}", r"renders to 16,384"),
    "big integer from a string": ("{{ ('9' * 4000)|int * 10 }}", r"a number of 13,2\d\d bits"),
    "deep nesting": ("{{ " + "(" * 1500 + "1" + ")" * 1500 + " }}", r"nested too deeply"),
    "long template": ("{{ ds }}" + "x" * MAX_TEMPLATE_CHARS, r"at most 4,096 characters"),
    "float overflow": ("{{ 10.0 ** 400 }}", r"OverflowError"),
    "division by zero": ("{{ 1 // 0 }}", r"ZeroDivisionError"),
    "attribute escape": ("{{ ds.__class__.__mro__ }}", r"unsafe"),
    "lipsum is gone": ("{{ lipsum(1000) }}", r"'lipsum' is undefined"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_template_is_one_clean_value_error(name: str) -> None:
    text, says = HOSTILE[name]
    with pytest.raises(ValueError) as info:
        render_template(text, CONTEXT)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(says, message), message
    assert "root:" not in message  # nothing of /etc/passwd


def test_every_case_stays_within_time_and_memory(tmp_path: Path) -> None:
    """All the cases in a fresh process capped at 1 GiB of address space: each is refused by a
    check, not by running out of memory, and the process stays small."""
    script = tmp_path / "cases.py"
    script.write_text(
        "import json, sys\n"
        "from datetime import date\n"
        "from tuneloop.config.templating import render_template, sample_template_context\n"
        "context = sample_template_context(date(2026, 3, 9))\n"
        "outcomes = {}\n"
        "for name, text in json.load(sys.stdin).items():\n"
        "    try:\n"
        "        outcomes[name] = 'rendered ' + render_template(text, context)[:40]\n"
        "    except ValueError as exc:\n"
        "        outcomes[name] = str(exc)\n"
        f"sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from peak_memory import peak_mib\n"
        "peak = peak_mib() * 2**20  # not ru_maxrss: it counts the pytest process exec replaced\n"
        "print(json.dumps({'outcomes': outcomes, 'peak': peak}))\n"
    )
    limit = 1 << 30

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    result = subprocess.run(
        [sys.executable, str(script)],
        input=json.dumps({name: text for name, (text, _) in HOSTILE.items()}),
        capture_output=True,
        text=True,
        timeout=120,  # the cases take well under a second together
        preexec_fn=cap_memory,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for name, outcome in report["outcomes"].items():
        assert re.search(HOSTILE[name][1], outcome), (name, outcome)
        assert "MemoryError" not in outcome, name
    assert report["peak"] < 400 * 2**20  # the largest value ever built is 16 MB


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{% if ds %}s3://b/{{ ds }}{% else %}none{% endif %}", "s3://b/2026-03-09"),
        ("{% set day = ds_nodash %}s3://b/{{ day }}/x", "s3://b/20260309/x"),
        ("s3://b/{{ '%05d' % 42 }}", "s3://b/00042"),
        ("s3://b/{{ '%s-%s'|format(ds, 123456789) }}", "s3://b/2026-03-09-123456789"),
        ("s3://b/{{ '{:>6}'.format(7) }}", "s3://b/     7"),
        ("s3://b/{{ params.get('shard', 100000) }}", "s3://b/100000"),
        ("s3://b/{{ range(3)|join('-') }}", "s3://b/0-1-2"),
        ("s3://b/{{ 2 ** 64 }}", "s3://b/18446744073709551616"),
        ("s3://b/{{ (data_interval_end - data_interval_start).days }}", "s3://b/1"),
        ("s3://b/{{ dict(a=10**9)['a'] }}", "s3://b/1000000000"),
        ("{% raw %}{{ ds }}{% endraw %}", "{{ ds }}"),
        ("s3://b/{{ 'a' * 4089 }}", "s3://b/" + "a" * 4089),  # exactly the output limit
    ],
)
def test_ordinary_templates_still_render(text: str, expected: str) -> None:
    assert render_template(text, CONTEXT) == expected


def test_limits_are_what_the_docs_say() -> None:
    assert MAX_TEMPLATE_CHARS == MAX_OUTPUT_CHARS == MAX_ITEMS == 4096


def test_a_hostile_data_uri_in_a_campaign_is_one_located_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = yaml.safe_load(DEMO.read_text())
    data["evaluation"]["dataset"] = "data/{% include '/etc/passwd' %}"
    campaign = tmp_path / "campaign.yaml"
    campaign.write_text(yaml.safe_dump(data, sort_keys=False))
    code = main(["campaign", "validate", str(campaign)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    [line] = err.strip().splitlines()
    dataset_line = next(
        n for n, text in enumerate(campaign.read_text().splitlines(), 1) if "dataset:" in text
    )
    assert line.startswith(f"{campaign}:{dataset_line}: evaluation.dataset: cannot render")
    assert "{% include %} is not allowed" in line and "root:" not in line
