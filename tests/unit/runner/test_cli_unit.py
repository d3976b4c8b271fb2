"""tradeops run / incidents / report without a lab: argument parsing, --help, exit code 3 for bad input."""

from __future__ import annotations

import json

import pytest

from tradeops.cli import build_parser, main
from tradeops.runner import IncidentInputError, IncidentResult
from tradeops.runner.cli import parse_extra_vars


def test_extra_vars_like_ansible_playbook(tmp_path):
    f = tmp_path / "vars.yml"
    f.write_text("a: 1\nb: [x]\n")
    assert parse_extra_vars(["x=1 y='two words'", '{"z": true}', f"@{f}"]) == \
        {"x": "1", "y": "two words", "z": True, "a": 1, "b": ["x"]}
    for bad in ["novalue", "[1, 2]", "{unclosed", "@/nonexistent"]:
        with pytest.raises(IncidentInputError):
            parse_extra_vars([bad])


def test_extra_vars_accept_what_ansible_playbook_accepts():
    # README's example: the shell has taken the quotes off, the value has spaces
    assert parse_extra_vars(["p0_outage_reason=INC-1234 engines down"]) == {"p0_outage_reason": "INC-1234 engines down"}
    assert parse_extra_vars(["p0_outage_reason='INC-1234 engines down' resume_trading_approved=true"]) == \
        {"p0_outage_reason": "INC-1234 engines down", "resume_trading_approved": "true"}
    assert parse_extra_vars(["a=1 b=two words c=3"]) == {"a": "1", "b": "two words", "c": "3"}
    # Jinja blocks and '=' inside values are kept whole, as ansible-playbook's own splitter keeps them
    assert parse_extra_vars(["t={{ lookup('env', 'X') | default('a b=c') }} u=v=w"]) == \
        {"t": "{{ lookup('env', 'X') | default('a b=c') }}", "u": "v=w"}
    assert parse_extra_vars(['{"p0_outage_reason": "INC-1 x"}', "{k: [1]}"]) == \
        {"p0_outage_reason": "INC-1 x", "k": [1]}


def test_a_bad_extra_vars_file_says_where_not_what(tmp_path):
    canary = "cnry-3f0e9a1b77"
    f = tmp_path / "vars.yml"
    f.write_text(f"ok: 1\ndb_password: '{canary}\n")
    with pytest.raises(IncidentInputError) as err:
        parse_extra_vars([f"@{f}"])
    assert canary not in str(err.value) and str(f) in str(err.value) and "line 3, column" in str(err.value)
    f.write_bytes(b"k: \xff" + canary.encode())
    with pytest.raises(IncidentInputError) as err:
        parse_extra_vars([f"@{f}"])
    assert canary not in str(err.value) and "not UTF-8" in str(err.value)
    with pytest.raises(IncidentInputError) as err:
        parse_extra_vars(['{"db_password": "' + canary])
    assert canary not in str(err.value) and "line 1" in str(err.value)


@pytest.mark.parametrize("value", ["-5", "0", "inf", "nan", "-inf", "1e99", "soon"])
def test_timeout_must_be_finite_and_positive(value, tmp_path, capsys):
    assert main(["run", "p0_outage", f"--timeout={value}", "--runs-dir", str(tmp_path / "runs")]) == 3
    err = capsys.readouterr().err
    assert "--timeout" in err and value in err
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_help_documents_the_exit_codes(capsys):
    assert main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    for code in ("0  resolved", "1  remediation failed", "2  halted but not recovered", "3  bad input"):
        assert code in text
    assert "--via-worker" in text and "--check" in text and "--json" in text


def test_groups_are_registered():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert {"lab", "drill", "run", "incidents", "report"} <= set(choices)


def test_bad_input_exits_3(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    assert main(["run", "no_such_incident", "--runs-dir", runs]) == 3
    assert main(["run", "p0_outage", "-e", "broken", "--runs-dir", runs]) == 3
    assert main(["run", "p0_outage", "-i", str(tmp_path / "missing"), "--runs-dir", runs]) == 3
    assert main(["run", "p0_outage", "--secret-var", "x=NO_SUCH_ENV_VAR_X", "--runs-dir", runs]) == 3
    assert main(["run", "--bogus-option", "p0_outage"]) == 3
    assert main(["report", "nope", "--runs-dir", runs]) == 3
    err = capsys.readouterr().err
    assert "unknown incident" in err and "does not exist" in err


def test_incidents_lists_p0_with_severity(capsys):
    assert main(["incidents"]) == 0
    out = capsys.readouterr().out
    assert "p0_outage" in out and "P0" in out and "awx_configure" not in out
    assert main(["incidents", "--all", "--json"]) == 0
    names = {i["name"] for i in json.loads(capsys.readouterr().out)}
    assert {"p0_outage", "resume_trading", "health_check"} <= names


def test_report_reads_a_stored_result(tmp_path, capsys):
    run = tmp_path / "p0_outage-20260101T000000Z-abcdef"
    run.mkdir()
    r = IncidentResult(run_id=run.name, incident="p0_outage", playbook="p.yml", status="successful", rc=0,
                       outcome="resolved", exit_code=0, verdict="RESOLVED: test", halted=["engine-001"],
                       timeline=[("2026-01-01T00:00:01+00:00", "contain", "Kill switch", "engine-001", "changed")])
    (run / "result.json").write_text(r.to_json())
    assert main(["report", "p0_outage-2026", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "RESOLVED: test" in out and "contain" in out and "Kill switch" in out
    assert main(["report", "latest", "--json", "--runs-dir", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["run_id"] == run.name
