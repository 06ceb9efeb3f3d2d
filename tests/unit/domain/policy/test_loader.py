"""Validation: every kind of problem names its file, policy and line, and says what fits."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from backend.domain.policy import (
    MAX_FILE_BYTES,
    Mode,
    PolicyProblem,
    PolicyValidationError,
    load_pack,
    load_text,
    validate_paths,
    validate_text,
)
from backend.domain.policy.spec import MAX_EXPANDED_NODES

REPO = Path(__file__).resolve().parents[4]
REFERENCE_NAMES = [
    "idle-nonprod-ec2-stop", "previous-generation-ec2", "unattached-ebs-delete", "gp2-to-gp3",
    "orphan-snapshots", "unassociated-eip-release", "idle-alb-delete", "idle-rds-stop",
]  # fmt: skip


def problems_in(body: str) -> list[PolicyProblem]:
    return validate_text(textwrap.dedent(body), "pack.yml")


def only(body: str) -> PolicyProblem:
    found = problems_in(body)
    assert len(found) == 1, found
    return found[0]


def test_the_default_pack_and_the_reference_pack_are_clean() -> None:
    assert validate_paths([REPO / "policies"]) == []
    assert validate_paths([REPO / "bench" / "reference-pack.yml"]) == []
    reference = load_pack([REPO / "bench" / "reference-pack.yml"])
    assert [p.name for p in reference] == REFERENCE_NAMES
    default = load_pack([REPO / "policies"])
    assert set(REFERENCE_NAMES) <= set(default.by_name)
    assert {
        "stopped-ec2-over-30-days",
        "old-snapshots",
        "offhours-nonprod",
        "rightsize-ec2-low-cpu",
    } <= set(default.by_name)
    for policy in default:
        assert policy.description
        assert policy.source_file
        assert policy.source_line
        assert policy.limits.max_actions_per_run is not None
    assert default.by_name["offhours-nonprod"].schedule is not None
    # what the evening stops, the morning starts again, read in the same zone
    stop, start = default.by_name["offhours-nonprod"], default.by_name["onhours-nonprod"]
    assert (stop.action.name, start.action.name) == ("stop", "start")
    assert start.schedule is not None and stop.schedule is not None
    assert start.schedule.timezone == stop.schedule.timezone
    assert default.by_name["gp2-to-gp3"].mode is Mode.AUTO
    assert default.by_name["unattached-ebs-delete"].notice.grace_days == 7


def test_a_problem_names_file_policy_and_line() -> None:
    problem = only("""\
        policies:
          - name: idle
            resource: ec2
            filters:
              - "State.Name": running
              - type: metricz
                name: CPUUtilization
    """)
    assert (problem.file, problem.policy, problem.line) == ("pack.yml", "idle", 6)
    assert problem.message.startswith("unknown filter type 'metricz'; expected one of: age, ")
    assert "(did you mean 'metrics'?)" in problem.message
    assert str(problem).startswith("pack.yml:6: policy 'idle': unknown filter type")


def test_many_problems_are_collected_at_once() -> None:
    found = problems_in("""\
        policies:
          - name: a
            resource: ec2
            filters: [{type: metricz}, {type: age}]
            mode: sometimes
          - name: b
            resource: ebs
            action: stop
    """)
    assert [(p.policy, p.line) for p in found] == [("a", 5), ("a", 4), ("a", 4), ("b", 8)]


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yml").write_text("policies:\n  - name: x\n    resource: ec2\n")
    (tmp_path / "b.yaml").write_text(
        "policies:\n\n  - name: y\n    resource: ec2\n  - name: x\n    resource: ebs\n"
    )
    (tmp_path / "notes.txt").write_text("not a policy file")
    found = validate_paths([tmp_path])
    assert [str(p) for p in found] == [
        f"{tmp_path / 'b.yaml'}:5: policy 'x': duplicate policy name 'x' (first defined at "
        f"{tmp_path / 'a.yml'}:2)"
    ]
    with pytest.raises(PolicyValidationError) as raised:
        load_pack([tmp_path])
    assert raised.value.problems == tuple(found)
    assert "1 problem(s) in the policy pack" in str(raised.value)


def test_a_duplicate_name_is_reported_beside_its_policies_other_problems() -> None:
    found = problems_in("""
        policies:
          - name: x
            resource: ec2
            filters: [{type: nonsense}]
          - name: x
            resource: ebs
            action: stop
    """)
    assert [(p.policy, p.line, p.message.split(";")[0]) for p in found] == [
        ("x", 5, "unknown filter type 'nonsense'"),
        ("x", 8, "action 'stop' does not apply to kind 'ebs'"),
        ("x", 6, "duplicate policy name 'x' (first defined at pack.yml:3)"),
    ]


def test_the_pack_is_refused_whole(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text("policies:\n  - name: fine\n    resource: ec2\n")
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "policies:\n  - name: broken\n    resource: ec2\n    mode: auto\n"
        "    action: terminate\n    filters: [{type: nope}]\n"
    )
    assert len(load_pack([good])) == 1
    with pytest.raises(PolicyValidationError) as raised:
        load_pack([good, bad])
    assert [p.policy for p in raised.value.problems] == ["broken"]


def test_malformed_yaml_is_one_problem_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text(
        "policies:\n  - name: a\n    resource: ec2\n    filters: [unclosed\n  - name: b\n"
    )
    (problem,) = validate_paths([path])
    assert problem.file == str(path)
    assert problem.policy is None
    assert problem.message.startswith("malformed YAML:")
    assert problem.line == 5


def test_yaml_oddities() -> None:
    assert only("policies:\n  - name: a\n    name: b\n    resource: ec2\n").message == (
        "malformed YAML: duplicate key 'name'"
    )
    assert only("- just a list\n").message == (
        "expected a mapping with a 'policies:' list, got a list"
    )
    assert only("").message == "expected a mapping with a 'policies:' list, got nothing (null)"
    assert [p.message for p in problems_in("policy: []\n")] == [
        "unknown key 'policy' in the file; expected one of: policies (did you mean 'policies'?)",
        "missing required key 'policies' in the file",
    ]
    assert only("policies: 3\n").message == "'policies' must be a list, got a number (3)"
    assert only("policies:\n  - stop\n").message == "each policy must be a mapping, got text 'stop'"


def test_empty_policy_list_is_valid() -> None:
    assert problems_in("policies: []\n") == []


def test_anchors_work_but_an_alias_bomb_is_refused() -> None:
    shared = """\
        common: &common
          - "tag:finops:opt-out": absent
        policies:
          - {name: a, resource: ec2, filters: *common}
    """
    assert only(shared).message.startswith("unknown key 'common' in the file")
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    problem = only("\n".join(levels) + "\n")
    assert problem.message == (
        f"document expands to more than {MAX_EXPANDED_NODES} nodes (YAML aliases)"
    )


def test_deep_nesting_is_refused() -> None:
    tree: object = {"State.Name": "running"}
    for _ in range(40):
        tree = {"not": [tree]}
    import yaml

    text = yaml.safe_dump({"policies": [{"name": "deep", "resource": "ec2", "filters": [tree]}]})
    assert "nested deeper than 32 levels" in only(text).message


def test_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.yml"
    path.write_bytes(b"policies: [" + b"x" * MAX_FILE_BYTES)  # also malformed: never parsed
    (problem,) = validate_paths([path])
    assert problem.message == (
        f"file is {MAX_FILE_BYTES + 11} bytes; policy files are limited to {MAX_FILE_BYTES}"
    )
    assert "over" in validate_text("#" * (MAX_FILE_BYTES + 1))[0].message


def test_paths(tmp_path: Path) -> None:
    (problem,) = validate_paths([tmp_path / "missing.yml"])
    assert problem.message == "no such file or directory"
    (problem,) = validate_paths([tmp_path])
    assert problem.message == "no *.yml or *.yaml files in this directory"
    latin = tmp_path / "latin.yml"
    latin.write_bytes(b"policies: [] # caf\xe9\n")
    (problem,) = validate_paths([latin])
    assert problem.message.startswith("file is not UTF-8 text")


def test_directory_files_load_in_sorted_order(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.yml", "c.yml"):
        (tmp_path / name).write_text(f"policies:\n  - name: from-{name[0]}\n    resource: ec2\n")
    assert [p.name for p in load_pack([tmp_path])] == ["from-a", "from-b", "from-c"]


def test_defaults_and_custodian_forms() -> None:
    pack = load_text(
        textwrap.dedent("""\
        policies:
          - name: custodian-style
            resource: aws.app-elb
            filters:
              - Type: application
            actions:
              - type: delete
          - name: report-only
            resource: ec2
          - name: "off"
            resource: ec2
            enabled: false
            description: "  spaced  "
            notice: {grace_days: 2}
    """)
    )
    first, second, third = pack
    assert first.action.name == "delete"
    assert first.kind.value == "elb"
    assert first.mode is Mode.REPORT
    assert first.risk.value == "medium"
    assert first.enabled
    assert second.action.name == "report"
    assert second.notice.notify is False
    assert not third.enabled
    assert third.description == "spaced"
    assert third.notice.notify is True
    assert third.notice.grace_days == 2
    assert (first.source_line, second.source_line, third.source_line) == (2, 8, 10)


def test_rollback_section() -> None:
    text = """
policies:
  - name: a
    resource: ec2
    action: stop
    rollback: {window-days: 3.5, alarms: [api-5xx, "db latency"]}
  - name: b
    resource: ec2
    action: stop
"""
    pack = load_text(text, "r.yml")
    assert pack.by_name["a"].rollback.window_days == 3.5
    assert pack.by_name["a"].rollback.alarms == ("api-5xx", "db latency")
    assert pack.by_name["b"].rollback.window_days is None  # the configured default applies
    assert pack.by_name["b"].rollback.alarms == ()


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("{window-days: -1}", "'window-days' must be between 0 and 365"),
        ("{window-days: soon}", "'window-days' must be a number"),
        ("{alarms: api-5xx}", "'alarms' must be a list of CloudWatch alarm names"),
        ("{alarms: [1, 2]}", "'alarms' must be a list of CloudWatch alarm names"),
        ("{windows: 3}", "windows"),
    ],
)
def test_rollback_section_errors(section: str, expected: str) -> None:
    text = f"policies:\n  - name: a\n    resource: ec2\n    action: stop\n    rollback: {section}\n"
    with pytest.raises(PolicyValidationError) as caught:
        load_text(text, "r.yml")
    assert expected in str(caught.value)
    assert "r.yml" in str(caught.value) and ":5" in str(caught.value)


def test_a_name_with_a_final_newline_is_refused() -> None:
    """`$` would let "gp2-to-gp3\\n" by: a look-alike that pausing gp2-to-gp3 leaves running."""
    problem = only("""\
        policies:
          - name: "gp2-to-gp3\\n"
            resource: ebs
    """)
    assert "policy name 'gp2-to-gp3\\n' must be letters, digits" in problem.message


@pytest.mark.parametrize("pattern", ["a{99999999999}", "(" * 3000 + ")" * 3000])
def test_a_regex_python_cannot_compile_is_a_problem_not_a_crash(pattern: str) -> None:
    problem = only(f"""\
        policies:
          - name: odd-volumes
            resource: ebs
            filters: [{{type: value, key: VolumeType, op: regex, value: '{pattern}'}}]
    """)
    assert problem.policy == "odd-volumes" and problem.line == 4
    assert "too large or nested too deeply to compile" in problem.message


def test_a_key_may_override_one_merged_in_but_not_repeat_its_own() -> None:
    body = """\
        policies:
          - &base {name: loose-volumes, resource: ebs, filters: [unattached], mode: approval,
                   action: {type: delete, backup: true}}
          - <<: *base
            name: loose-volumes-report
            mode: report
    """
    assert problems_in(body) == []
    pack = load_text(textwrap.dedent(body), "pack.yml")
    assert [(p.name, p.mode.value) for p in pack] == [
        ("loose-volumes", "approval"),
        ("loose-volumes-report", "report"),
    ]
    repeated = body.rstrip(" ") + "            mode: auto\n"
    assert only(repeated).message == "malformed YAML: duplicate key 'mode'"
