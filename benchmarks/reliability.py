"""Reliability figures: faults injected and survived, bad inputs refused, trials lost.

Runs the fault tests (real worker processes, a real PostgreSQL on 127.0.0.1, signals, kill -9) and
the bad-input corpus through pytest, reads the outcome of each case, and writes
``benchmarks/results/reliability.json`` for the README.

    python benchmarks/reliability.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# test name (prefix) → (fault injected, what must hold afterwards)
FAULTS = {
    "test_killed_worker_trial_is_failed_retried_and_completed[sqlite]": (
        "kill -9 a worker mid-trial, SQLite", "trial failed (pid gone or heartbeat), retried, completed; metrics intact"),
    "test_killed_worker_trial_is_failed_retried_and_completed[postgres]": (
        "kill -9 a worker mid-trial, PostgreSQL", "trial failed (pid gone or heartbeat), retried, completed; metrics intact"),
    "test_kill_9_then_rerun_at_once_leaves_no_running_trial": (
        "kill -9 a worker, rerun at once", "the dead worker's trial failed at once, study finished, nothing RUNNING"),
    "test_postgres_restart_during_a_study": (
        "restart PostgreSQL mid-study", "writes retried, worker reconnected, study completed, nothing RUNNING"),
    "test_postgres_gone_for_good_is_one_line_and_a_restart_and_rerun_completes": (
        "PostgreSQL stopped for good mid-trial", "exit 2 with one line; restarted, the rerun completed the study"),
    "test_two_workers_with_a_budget_of_3_finish_exactly_3": (
        "two workers with --n-trials 3 on one file, 3 rounds", "exactly 3 finished trials every round"),
    "test_a_baseline_stopped_mid_trial_is_owed_and_run_again": (
        "kill -9, or SIGTERM, during the dense baseline", "the rerun ran the baseline again: it COMPLETEd"),
    "test_sigterm_anywhere_in_start_up_or_the_first_trial_stops_the_worker": (
        "SIGTERM at 9 moments from start-up into the first trial", "the worker stopped every time; nothing RUNNING"),
    "test_signal_to_study_run_records_the_trial_and_rerun_continues[2]": (
        "SIGINT to `oialr study run`", "trial FAIL with the signal recorded; rerun completed the study"),
    "test_signal_to_study_run_records_the_trial_and_rerun_continues[15]": (
        "SIGTERM to `oialr study run`", "trial FAIL with the signal recorded; rerun completed the study"),
    "test_signal_to_train_keeps_the_checkpoint_and_resume_finishes[2]": (
        "SIGINT to `oialr train`", "run recorded failed; checkpoint intact; --resume finished it"),
    "test_signal_to_train_keeps_the_checkpoint_and_resume_finishes[15]": (
        "SIGTERM to `oialr train`", "run recorded failed; checkpoint intact; --resume finished it"),
    "test_failing_trials_are_recorded_and_the_study_goes_on": (
        "trials raising (a bad parameter combination)", "recorded FAIL with the reason; the study went on"),
    "test_nan_loss_fails_cleanly_and_is_recorded": (
        "NaN loss", "one-line error naming the step and the fix; run recorded failed"),
    "test_truncated_checkpoint_gives_a_clear_error": (
        "truncated checkpoint", "one-line error, no crash deep in torch"),
    "test_concurrent_writer_processes_and_reader": (
        "two writer processes and a reader on one SQLite file", "no 'database is locked'; every row read back"),
}  # fmt: skip
BAD_INPUT_TESTS = (
    "test_train_refuses_before_writing",
    "test_resume_from_another_runs_checkpoint",
    "test_study_run_refuses_before_writing",
    "test_a_study_name_reused_with_another_spec",
    "test_read_only_commands_create_and_overwrite_nothing",
    "test_bad_spec",
    "test_bad_arguments",
    "test_malformed_command_lines",
    "test_cli_train_bad_input",
)
BAD_LINK_TESTS = ("test_a_link_to_nowhere_says_what_it_shows_instead",)
FILES = [
    "tests/test_faults.py",
    "tests/test_refusals.py",
    "tests/test_app_links.py",
    "tests/test_spec.py",
    "tests/test_train.py",
    "tests/test_metrics_store.py",
]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={xml}", *FILES], cwd=ROOT, check=False)  # fmt: skip
        cases = {
            c.get("name"): not any(child.tag in ("failure", "error", "skipped") for child in c)
            for c in ET.parse(xml).getroot().iter("testcase")
        }
    faults = []
    for test, (fault, outcome) in FAULTS.items():
        runs = [ok for name, ok in cases.items() if name == test or name.startswith(f"{test}[")]
        if not runs:
            continue
        passed = all(runs)
        faults.append({"fault": fault, "outcome": outcome if passed else "FAILED", "passed": passed,
                       "command": f"pytest -k '{test.split('[')[0]}'"})  # fmt: skip
    bad = [name for name in cases if name.startswith(BAD_INPUT_TESTS)]
    links = [name for name in cases if name.startswith(BAD_LINK_TESTS)]
    survived = sum(f["passed"] for f in faults)
    report = {
        "faults_injected": len(faults),
        "faults_survived": survived,
        "faults": faults,
        "bad_inputs": len(bad),
        "bad_inputs_refused": sum(cases[n] for n in bad),
        "bad_links": len(links),
        "bad_links_named": sum(cases[n] for n in links),
        # every fault test asserts that each finished trial and its metrics are there
        "trials_lost": 0
        if survived == len(faults)
        else f"unknown: {len(faults) - survived} fault tests failed",
    }
    concurrency = ROOT / "benchmarks/results/concurrency.json"
    if concurrency.exists():
        c = json.loads(concurrency.read_text())
        report["concurrency"] = (
            f"Concurrency (`python benchmarks/concurrency.py`): the dashboard's queries polled "
            f"every second ({c['polls']} polls, p50 {c['poll_ms']['p50']:.0f} ms) while two workers "
            f"wrote {sum(c['final']['rows_written'].values()):,} metric rows to one SQLite file for "
            f"{c['config']['seconds']:.0f} s: **{c['reader_lock_errors'] + c['worker_lock_lines']} "
            "'database is locked' errors**."
        )
    out = ROOT / "benchmarks/results/reliability.json"
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "faults"}, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
