"""Each kind of problem, with the line it names and the message that says what fits.

A case is a policy `p` of a resource kind plus body lines; the body starts on line 4.
"""

from __future__ import annotations

import pytest

from backend.domain.policy import validate_text

CASES = [
    # filters
    ("ebs", "filters:\n  - {type: metrics, name: CPUUtilization, value: 5}", 5,
     "metric 'CPUUtilization' is not available for kind 'ebs'; available: VolumeIdleTime, "
     "VolumeReadBytes"),
    ("ami", "filters: [{type: metrics, name: CPUUtilization, value: 5}]", 4,
     "kind 'ami' has no metrics; kinds with metrics: ebs, ec2, elb, rds"),
    ("ec2", 'filters:\n  - {type: value, key: InstanceType, op: regex, value: "(t2"}', 5,
     "filter on 'InstanceType': bad regex '(t2': missing ), unterminated subpattern"),
    ("ec2", 'filters:\n  - {type: age, days: "30"}', 5, "'days' must be a number, got text '30'"),
    ("ec2", "filters: {State: running}", 4, "'filters' must be a list of filters, got a mapping"),
    ("ec2", "filters: [{type: value, key: x, op: between, value: 1}]", 4,
     "unknown op 'between'; expected one of: eq, equal, ge, greater-than, gt, gte"),
    ("ec2", "filters: [{type: value, key: x, op: in, value: a}]", 4,
     "filter on 'x': op 'in' needs a non-empty list of values, got text 'a'"),
    ("ec2", "filters: [{type: value, key: x, op: gt, value: absent}]", 4,
     "'absent' goes with op eq or ne, not 'gt'"),
    ("ec2", "filters: [{type: value, key: x, op: gt, value: [1]}]", 4,
     "filter on 'x': op 'gt' needs a number or a text, got a list"),
    ("ec2", "filters: [{InstanceType: [t2.micro, t3.micro]}]", 4,
     "shorthand filter 'InstanceType' takes one value, got a list; for a list write "
     "{type: value, key: 'InstanceType', op: in, value: [...]}"),
    ("ec2", "filters: [{type: value, key: x}]", 4,
     "missing required key 'value' in a value filter"),
    ("ec2", "filters: [{a: 1, b: 2}]", 4,
     "a filter mapping needs 'type:' unless it is a one-key shorthand"),
    ("ec2", "filters:\n  - unattached", 5,
     "filter 'unattached' does not apply to kind 'ec2'; it applies to: ebs"),
    ("ec2", "filters:\n  - metrics", 5,
     "filter 'metrics' needs parameters; write it as a mapping with 'type: metrics'"),
    ("ec2", "filters:\n  - or: []", 5, "'or' needs at least one filter"),
    ("ec2", "filters:\n  - 42", 5, "a filter must be a mapping or a filter name, got a number"),
    ("ebs", "filters:\n  - {type: unattached, key: x}", 5,
     "unknown key 'key' in filter 'unattached'; expected one of: type"),
    ("ec2", "filters:\n  - {type: metrics, name: CPUUtilization, value: 5, statistic: Median}", 5,
     "unknown value 'Median' for 'statistic'; expected one of: Average, Maximum"),
    ("ec2", "filters:\n  - {type: metrics, name: CPUUtilization, value: 5, days: 500}", 5,
     "'days' must be between 1 and 455, got 500"),
    ("ec2", "filters:\n  - {type: metrics, name: CPUUtilization, value: 5, days: 7, period: 9}", 5,
     "'period' must equal days * 86400 = 604800 (one summary over the window)"),
    ("ec2", "filters:\n  - {type: age, days: 5, of: launched}", 5,
     "unknown value 'launched' for 'of'; expected one of: created, state-changed"),
    # eq/ne on an age hold for an instant: refused rather than crashing `finops plan`
    ("ec2", "filters:\n  - {type: age, days: 30, op: ne}", 5,
     "op 'ne' does not apply to an age filter; expected one of: gt, ge, lt, le"),
    ("ec2", "filters:\n  - type: age\n    days: 30\n    op: equal", 7,
     "op 'equal' does not apply to an age filter; expected one of: gt, ge, lt, le"),
    # actions and modes
    ("ebs", "action: stop", 4,
     "action 'stop' does not apply to kind 'ebs'; it applies to: ec2, rds"),
    ("ebs", "mode: auto\naction: {type: delete, backup: false}", 5,
     "action 'delete' on mode auto needs a backup (backup: false given)"),
    ("aws.ebs-snapshot", "mode: auto\nactions: [delete]", 5,
     "action 'delete' has no inverse for kind 'ebs-snapshot'; mode auto needs a reversible "
     "action, use mode approval"),
    ("eip", "mode: auto\naction: release", 5, "action 'release' has no inverse for kind "
     "'elastic-ip'"),
    ("ec2", "action: stopp", 4, "unknown action 'stopp'; expected one of: "),
    ("ebs", "action: restore-volume", 4,
     "('restore-volume' is an undo step, not for policies)"),
    ("ebs", "action: {type: modify-volume, volume-type: gp9}", 4,
     "action 'modify-volume' parameter 'volume-type': Input should be 'gp2'"),
    ("ebs", "action: {type: modify-volume, volume-type: gp3, size: 5}", 4,
     "unknown parameter 'size' of action 'modify-volume'; expected one of: iops, throughput, "
     "volume-type"),
    ("ebs", "actions: [delete, report]", 4,
     "'actions' must be a list of exactly one action (one action per policy)"),
    ("ebs", "action: [delete]", 4, "an action is a name or a mapping with 'type:', got a list"),
    ("ebs", "action: delete\nactions: [delete]", 5, "give 'action' or 'actions', not both"),
    ("ec2", "mode: yolo", 4, "unknown value 'yolo' for 'mode'; expected one of: approval, auto, "
     "report"),
    # the policy itself
    ("ec2", "filtres: []", 4,
     "unknown key 'filtres' in a policy; expected one of: action, actions, description, "
     "enabled, filters, limits, mode, name, notice, resource, risk, rollback, schedule "
     "(did you mean 'filters'?)"),
    ("ec2", 'enabled: "yes"', 4, "'enabled' must be true or false, got text 'yes'"),
    ("ec2", "risk: extreme", 4,
     "unknown value 'extreme' for 'risk'; expected one of: high, low, medium"),
    ("aws.s3", "", 3, "unknown resource kind 'aws.s3'; expected one of: ec2, ebs"),
    # schedule, notice, limits
    ("ec2", 'schedule: {cron: "0 25 * * *", timezone: UTC}', 4,
     "bad cron expression '0 25 * * *': the hour field '25' is not valid; expected 0-23"),
    ("ec2", 'schedule:\n  cron: "0 19 * * 1-5"\n  timezone: Europe/Pariss', 5,
     "unknown time zone 'Europe/Pariss'; expected an IANA name"),
    ("ec2", 'schedule: {cron: "0 19 * * *", zone: UTC}', 4,
     "unknown key 'zone' in 'schedule'; expected one of: cron, timezone (did you mean "
     "'timezone'?)"),
    ("ec2", "schedule: daily", 4, "'schedule' must be a mapping, got text 'daily'"),
    ("ec2", "limits:\n  max-actions-per-run: 0", 5,
     "'max-actions-per-run' must be between 1 and 100000, got 0"),
    ("ec2", "limits: {max_percent_of_fleet: 250}", 4,
     "'max-percent-of-fleet' must be above 0 and at most 100, got 250"),
    ("ec2", "limits: 5", 4, "'limits' must be a mapping, got a number (5)"),
    ("ec2", "notice: {notify: true, grace-days: 400}", 4,
     "'grace-days' must be between 0 and 90, got 400"),
    ("ec2", "notice: {notify: 1}", 4, "'notify' must be true or false, got a number (1)"),
    ("ec2", 'schedule: {cron: "0 19 * * 1-5", timezone: UTC}\n'
     "notice: {notify: true, grace-days: 3}", 5,
     "a policy with a schedule acts just after its cron fires, so it cannot also wait 3 "
     "day(s) of owner notice"),
    ("ec2", "rollback: {window-days: .nan}", 4,
     "'window-days' must be a number, got nan (not a finite number)"),
]  # fmt: skip


@pytest.mark.parametrize(("resource", "body", "line", "message"), CASES)
def test_problem(resource: str, body: str, line: int, message: str) -> None:
    indented = "".join(f"    {row}\n" for row in body.splitlines())
    text = f"policies:\n  - name: p\n    resource: {resource}\n{indented}"
    found = validate_text(text, "pack.yml")
    assert len(found) == 1, found
    (problem,) = found
    assert (problem.file, problem.policy, problem.line) == ("pack.yml", "p", line), problem
    assert message in problem.message, problem.message
    assert str(problem).startswith(f"pack.yml:{line}: policy 'p': ")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("policies:\n  - name: p\n", 2, "missing required key 'resource' in a policy"),
        ("policies:\n  - resource: ec2\n", 2, "missing required key 'name' in a policy"),
        ("policies:\n  - name: 5\n    resource: ec2\n", 2,
         "'name' must be a non-empty text, got a number (5)"),
        ("policies:\n  - name: off\n    resource: ec2\n", 2,
         "'name' must be a non-empty text, got a boolean (false); quote it to make it text"),
        ('policies:\n  - name: "bad name!"\n    resource: ec2\n', 2,
         "policy name 'bad name!' must be letters, digits"),
    ],
)  # fmt: skip
def test_problem_with_the_name(text: str, line: int, message: str) -> None:
    (problem,) = validate_text(text, "pack.yml")
    assert (problem.file, problem.line) == ("pack.yml", line)
    assert message in problem.message
