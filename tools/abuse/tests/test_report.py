"""The verdict and the report of a run."""

from __future__ import annotations

import json

from pigeonpush_abuse.report import MB, AttackResult, Limits, document, judge, table


def result(**fields: object) -> AttackResult:
    base: dict[str, object] = {
        "name": "ping-flood",
        "description": "PINGs",
        "alive": True,
        "rss_before": 50 * MB,
        "rss_peak": 60 * MB,
        "rss_after": 55 * MB,
        "latencies": [0.01, 0.02],
    }
    base.update(fields)
    return AttackResult(**base)  # type: ignore[arg-type]


def test_a_quiet_attack_passes() -> None:
    outcome = result()
    assert judge(outcome, Limits()) == []
    assert outcome.passed


def test_a_dead_daemon_fails() -> None:
    assert judge(result(alive=False), Limits()) == ["the daemon died"]


def test_an_unknown_pid_is_no_failure_but_a_silent_health_check_is() -> None:
    assert judge(result(alive=None, rss_before=None, rss_peak=None), Limits()) == []
    assert judge(result(healthy=False), Limits()) == [
        "the daemon did not answer /health after the attack"
    ]


def test_memory_past_the_bound_fails() -> None:
    problems = judge(result(rss_peak=150 * MB), Limits(max_rss_growth=64 * MB))
    assert problems == ["RSS grew by 100.0 MB during the attack (bound 64 MB)"]


def test_a_slow_or_lost_delivery_fails() -> None:
    problems = judge(result(latencies=[0.01, 2.5, None, 1.2]), Limits(max_latency=1.0))
    assert problems == [
        "1 of 4 legitimate notifications were not delivered in time",
        "legitimate delivery took up to 2.50 s (2 over 1 s)",
    ]


def test_no_probe_at_all_fails() -> None:
    assert judge(result(latencies=[]), Limits()) == [
        "no legitimate delivery was attempted during the attack"
    ]


def test_memory_kept_per_login_fails_after_enough_logins() -> None:
    kept = result(rss_after=50 * MB + 20000 * 500, observed={"logins": 20000})
    assert judge(kept, Limits(max_rss_per_login=256)) == [
        "RSS kept 500 bytes per login after 20000 logins (bound 256 bytes)"
    ]
    few = result(rss_after=50 * MB + 5000 * 500, observed={"logins": 5000})
    assert judge(few, Limits(max_rss_per_login=256)) == []
    fine = result(rss_after=50 * MB + 20000 * 100, observed={"logins": 20000})
    assert judge(fine, Limits(max_rss_per_login=256)) == []


def test_control_characters_in_the_log_fail_any_attack() -> None:
    assert judge(result(log_controls=3), Limits()) == [
        "3 control characters (ESC, NUL, CR...) reached the daemon's log verbatim"
    ]
    assert judge(result(log_controls=0), Limits()) == []


def test_the_log_rate_is_judged_for_log_injection_only() -> None:
    noisy = {"duration": 10.0, "log_growth": 10 * 100 * 1024}
    assert judge(result(name="log-injection", **noisy), Limits(max_log_rate=64 * 1024)) == [
        "the daemon's log grew by 100 KB/s (bound 64 KB/s)"
    ]
    assert judge(result(name="random-frames", **noisy), Limits(max_log_rate=64 * 1024)) == []
    quiet = {"duration": 10.0, "log_growth": 10 * 1024}
    assert judge(result(name="log-injection", **quiet), Limits()) == []


def test_a_failed_attacker_fails() -> None:
    assert judge(result(attacker_error="exit status 1: boom"), Limits()) == [
        "the attack itself failed: exit status 1: boom"
    ]


def test_the_table_shows_the_summary_and_the_details() -> None:
    good = result(name="random-frames", sent={"frames": 10}, observed={"ERROR MALFORMED": 3})
    bad = result(latencies=[3.0], log_growth=1200)
    bad.observed = {"logins": 1000}
    for outcome in (good, bad):
        judge(outcome, Limits())
    text = table([good, bad])
    lines = text.splitlines()
    assert lines[0].split() == [
        "attack",
        "up",
        "RSS",
        "before/peak/after",
        "MB",
        "probes",
        "p-max",
        "s",
        "verdict",
    ]
    assert lines[1].split() == ["random-frames", "yes", "50.0/60.0/55.0", "2/2", "0.020", "ok"]
    assert lines[2].split()[-1] == "FAIL"
    assert "  sent:     frames=10" in text
    assert "  observed: ERROR MALFORMED=3" in text
    assert "  daemon log grew by 1200 bytes" in text
    assert f"  RSS kept per login after the attack: {5 * MB / 1000:.0f} bytes" in text
    assert "  FAIL: legitimate delivery took up to 3.00 s (1 over 1 s)" in text


def test_the_rss_per_login_needs_enough_logins() -> None:
    from pigeonpush_abuse.report import retained_per_login

    assert retained_per_login(result(observed={"logins": 20})) is None
    assert retained_per_login(result(observed={"logins": 5000})) == 5 * MB / 5000


def test_the_document_is_json_with_the_verdict() -> None:
    good, bad = result(), result(alive=False)
    judge(good, Limits())
    judge(bad, Limits())
    data = json.loads(json.dumps(document([good, bad], Limits(), seed=42)))
    assert data["seed"] == 42
    assert data["passed"] is False
    assert [attack["passed"] for attack in data["attacks"]] == [True, False]
    assert data["attacks"][0]["rss_growth"] == 10 * MB
    assert data["limits"] == {
        "max_rss_growth": 64 * MB,
        "max_latency": 1.0,
        "max_rss_per_login": 256,
        "max_log_rate": 64 * 1024,
    }
