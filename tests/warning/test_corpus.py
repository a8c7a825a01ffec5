"""The corpus of broken inputs (tests/corpus/make_corpus.py) through `floodwarn`, one test per case.

Every bad input ends one of three ways (issue 14, "Inputs that cannot lie"): an **error**
naming the file (or zone) and the problem, non-zero exit, no traceback; **flagged**: the
run completes, a problem in the run's summary says what was wrong and the bad values are
not used; **read**: the run completes and the value is read correctly. The expectations
and their oracles live with the cases, in make_corpus.py; ``judge`` lists what an outcome
lacks.

Speed: the demo terrain is prepared once for the module and copied into each grid case;
grid runs use 6 h of spin-up and horizon; gauge files run on the Dead Run gauge site (no
terrain); config and zone files go through ``check-config``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.corpus import make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, make_corpus.Case]:
    folder = tmp_path_factory.mktemp("corpus")
    return {c.id: c for c in make_corpus.build(folder)}


@pytest.fixture(scope="module")
def terrain(tmp_path_factory) -> Path:
    """The demo site's terrain cache, prepared once (only when a grid case runs)."""
    return make_corpus.prepare_terrain(tmp_path_factory.mktemp("terrain"))


@pytest.mark.parametrize("case_id", make_corpus.case_ids())
def test_bad_input(case_id, corpus, request, monkeypatch):
    case = corpus[case_id]
    if case.skip:
        pytest.skip(case.skip)
    if case.grid:
        make_corpus.install_terrain(case, request.getfixturevalue("terrain"))
    monkeypatch.setattr("warning.cli.console.width", 1000)  # messages on one line each
    monkeypatch.setattr("warning.cli.err_console.width", 1000)
    outcome = make_corpus.run_case(case)
    unmet = make_corpus.judge(case, outcome)
    assert not unmet, (f"{case.id} ({case.what}): expected {case.expect}, got {make_corpus.actual(outcome)}\n  "
                       + "\n  ".join(unmet) + f"\n--- output (exit {outcome.exit_code}) ---\n{outcome.output[-3000:]}")
