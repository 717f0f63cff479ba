"""Tracebacks found in daemon logs."""

from __future__ import annotations

from pathlib import Path

from pigeonpush_chaos.logscan import scan, tracebacks

TWISTED_LOG = """\
2026-01-01T00:00:00+0000 [pigeonpush.server#info] Serving
2026-01-01T00:00:01+0000 [twisted#critical] Unhandled error in Deferred:
2026-01-01T00:00:01+0000 [twisted#critical]
\tTraceback (most recent call last):
\t  File "x.py", line 1, in f
\t    g()
\t--- <exception caught here> ---
\t  File "y.py", line 2, in g
\t    raise KeyError("k")
\tbuiltins.KeyError: 'k'
2026-01-01T00:00:02+0000 [pigeonpush.server#info] Still serving
"""

BARE = """\
Traceback (most recent call last):
  File "z.py", line 3, in <module>
    main()
ValueError: bad
"""


def test_each_traceback_is_summed_up_by_its_exception() -> None:
    assert tracebacks(TWISTED_LOG.splitlines(True)) == ["builtins.KeyError: 'k'"]
    assert tracebacks(BARE.splitlines(True)) == ["ValueError: bad"]
    assert tracebacks((TWISTED_LOG + BARE).splitlines(True)) == [
        "builtins.KeyError: 'k'",
        "ValueError: bad",
    ]


def test_a_cut_traceback_is_still_counted() -> None:
    cut = 'Traceback (most recent call last):\n  File "a.py", line 1\n'
    assert tracebacks(cut.splitlines(True)) == ["(traceback without an exception line)"]
    assert tracebacks((cut + BARE).splitlines(True)) == [
        "(traceback without an exception line)",
        "ValueError: bad",
    ]


def test_scan_names_the_logs_with_tracebacks(tmp_path: Path) -> None:
    (tmp_path / "server-0.log").write_text(TWISTED_LOG)
    (tmp_path / "reglog.log").write_text("all quiet\n")
    found = scan([tmp_path / "server-0.log", tmp_path / "reglog.log", tmp_path / "gone.log"])
    assert found == {"server-0.log": ["builtins.KeyError: 'k'"]}
