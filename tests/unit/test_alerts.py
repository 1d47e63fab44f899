"""scanqueue.alerts: which findings alert, webhook URLs, the three payload shapes (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from scanqueue import alerts, config, errors

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CANARY = "s3cr3t-Canary-991"


def finding(cve: str, severity: str, fixed: str = "1.1", title: str = "t") -> alerts.NewFinding:
    return alerts.NewFinding(cve, severity, "openssl", "1.0", fixed, title, "https://x/" + cve)


def note(*findings: alerts.NewFinding) -> alerts.Notification:
    return alerts.notification(
        scan_id="s1",
        workload=("prod", "team-a", "Deployment", "web"),
        image="registry.example.com/team/web:1",
        digest="sha256:" + "a" * 64,
        scanned_at=NOW,
        findings=findings,
    )


@pytest.mark.parametrize(
    "rule,severity,fixed,alerts_",
    [
        (alerts.Rule(), "CRITICAL", "1.1", True),
        (alerts.Rule(), "CRITICAL", "", False),  # default: fixable only
        (alerts.Rule(), "HIGH", "1.1", False),
        (alerts.Rule("HIGH"), "HIGH", "1.1", True),
        (alerts.Rule("HIGH", fixable_only=False), "CRITICAL", "", True),
        (alerts.Rule("HIGH", fixable_only=False), "MEDIUM", "", False),
    ],
)
def test_rule_default_is_fixable_critical_and_is_configurable(
    rule: alerts.Rule, severity: str, fixed: str, alerts_: bool
) -> None:
    assert rule.qualifies(severity, fixed) is alerts_


def test_webhook_url_is_parsed_once_and_its_secrets_stay_out_of_repr_and_errors() -> None:
    hook = alerts.parse_webhook("slack", 0, f"https://bot:{CANARY}@hooks.example.com/T/B/{CANARY}")
    assert (hook.name, hook.host, hook.port, hook.password) == (
        "slack#0",
        "hooks.example.com",
        443,
        CANARY,
    )
    assert CANARY not in repr(hook) and CANARY not in hook.display
    for bad in (f"ftp://u:{CANARY}@h/x", f"http:///{CANARY}", f"https://h:99999/{CANARY}", "h/x#f"):
        with pytest.raises(errors.PermanentError) as raised:
            alerts.parse_webhook("generic", 1, bad)
        assert CANARY not in str(raised.value)


def test_a_bad_webhook_url_is_a_config_error_naming_the_key_not_the_url() -> None:
    with pytest.raises(errors.ConfigError, match=r"alerts.slack_urls\[0\]") as raised:
        config.from_mapping({"alerts": {"slack_urls": [f"hooks.slack.com/{CANARY}"]}})
    assert CANARY not in str(raised.value)
    settings = config.from_mapping({}, environ={"SCANQUEUE_ALERTS_MIN_SEVERITY": "HIGH"})
    assert settings.alerts.min_severity == "HIGH"
    with pytest.raises(errors.ConfigError):
        config.from_mapping({"alerts": {"min_severity": "SEVERE"}})


def test_notification_redacts_text_and_sorts_most_severe_first() -> None:
    n = note(
        finding("CVE-2", "HIGH"), finding("CVE-1", "CRITICAL", title=f"leak password={CANARY}")
    )
    assert [f.vulnerability_id for f in n.findings] == ["CVE-1", "CVE-2"]
    assert n.counts() == {"CRITICAL": 1, "HIGH": 1} and n.highest() == "CRITICAL"
    assert alerts.from_json(alerts.to_json(n)) == n
    for kind in alerts.KINDS:
        assert CANARY not in alerts.body(kind, n, now=NOW).decode()


def test_payload_shapes_generic_alertmanager_slack() -> None:
    n = note(*(finding(f"CVE-{i}", "CRITICAL") for i in range(25)))
    generic = json.loads(alerts.body("generic", n, now=NOW, max_findings=20))
    assert generic["workload"] == {"kind": "Deployment", "name": "web"}
    assert len(generic["findings"]) == 20 and generic["findings_omitted"] == 5
    am = json.loads(alerts.body("alertmanager", n, now=NOW))
    assert isinstance(am, list) and len(am) == 1
    assert am[0]["labels"] == {
        "alertname": "ScanqueueNewVulnerabilities", "severity": "critical", "cluster": "prod",
        "namespace": "team-a", "workload_kind": "Deployment", "workload": "web",
    }  # fmt: skip
    assert am[0]["startsAt"] == NOW.isoformat()
    assert "25 new vulnerabilities" in am[0]["annotations"]["summary"]
    slack = json.loads(alerts.body("slack", n, now=NOW))
    assert slack["text"].startswith("25 new vulnerabilities (25 CRITICAL) in prod/team-a")
    assert "... and 5 more" in slack["blocks"][1]["text"]["text"]


def test_retry_delay_doubles_up_to_the_cap() -> None:
    delays = [alerts.retry_delay(a, base=10, cap=60) for a in range(1, 6)]
    assert delays == [10, 20, 40, 60, 60]


def test_webhook_urls_can_come_from_a_secret_file_and_never_show_in_errors(tmp_path: Path) -> None:
    secret = tmp_path / "alert-webhooks.toml"
    secret.write_text(f'slack_urls = ["https://hooks.slack.com/services/T/B/{CANARY}"]\n')
    settings = config.from_mapping(
        {"alerts": {"generic_urls": ["http://hooks.example.com/in"], "webhooks_file": str(secret)}}
    )
    assert settings.alerts.slack_urls == (f"https://hooks.slack.com/services/T/B/{CANARY}",)
    assert settings.alerts.generic_urls == ("http://hooks.example.com/in",)
    secret.write_text(f'slack_urls = ["hooks.slack.com/{CANARY}"]\n')  # not a URL
    with pytest.raises(errors.ConfigError) as raised:
        config.from_mapping({"alerts": {"webhooks_file": str(secret)}})
    assert CANARY not in str(raised.value)
    secret.write_text(f'slack = "{CANARY}"\n')  # unknown key
    with pytest.raises(errors.ConfigError, match="unknown key 'slack'") as raised:
        config.from_mapping({"alerts": {"webhooks_file": str(secret)}})
    assert CANARY not in str(raised.value)
    with pytest.raises(errors.ConfigError, match="cannot read"):
        config.from_mapping({"alerts": {"webhooks_file": str(tmp_path / "missing.toml")}})
