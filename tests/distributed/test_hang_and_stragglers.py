"""A rank that sleeps inside a step (MEGATRON_LLM_TEST_SLOW_RANK): with a long nap the others fail within
--distributed-timeout-minutes naming rank and operation; with a short one every step, it is named a straggler.
Heartbeat files show where each rank stopped."""

from __future__ import annotations

import json
import time

from trainrun import check, make_dataset, train


def test_hung_rank_makes_the_others_fail_within_the_timeout(tmp_path):
    data = make_dataset(str(tmp_path / "zipf"))
    timeout_min = 0.15  # 9 s
    t0 = time.monotonic()
    proc = train(tmp_path, data, 2, ["--distributed-timeout-minutes", str(timeout_min), "--save", str(tmp_path / "ck"),
                                     "--save-interval", "100"],
                 iters=5, gbs=4, mbs=2, env={"MEGATRON_LLM_TEST_SLOW_RANK": "1:120:3"}, timeout=200)
    wall = time.monotonic() - t0
    assert proc.returncode != 0
    err = proc.stderr
    assert (f"rank 0 (" in err and "gradient reduction (finalize_model_grads) at iteration 3 failed" in err
            and f"--distributed-timeout-minutes {timeout_min}" in err), err[-4000:]
    assert wall < 100, wall  # far less than the 120 s nap: the timeout, not the sleeper, ended the job
    beats = {r: json.loads((tmp_path / "ck" / "heartbeat" / f"rank_{r:05d}.json").read_text()) for r in (0, 1)}
    # Rank 0 stopped in iteration 3's gradient reduction, waiting for the sleeper. The sleeper shows as the late one:
    # still in that iteration's forward-backward, or (its nap ended by the launcher's stop signal) reaching the
    # reduction seconds after rank 0 did.
    assert beats[0]["iteration"] == 3 and beats[0]["phase"].startswith("gradient reduction"), beats
    assert beats[1]["iteration"] == 3, beats
    assert (beats[1]["phase"].startswith("forward-backward")
            or beats[1]["since"] - beats[0]["since"] > 0.5 * timeout_min * 60), beats


def test_slow_rank_is_named_a_straggler(tmp_path):
    data = make_dataset(str(tmp_path / "zipf"))
    proc = train(tmp_path, data, 2, ["--log-interval", "2"], iters=4, gbs=4, mbs=2,
                 env={"MEGATRON_LLM_TEST_SLOW_RANK": "1:0.5"})
    check(proc)
    lines = [l for l in proc.stdout.splitlines() if "straggler" in l]
    assert lines and all("rank 1 (" in l and "rank 0 (" not in l for l in lines), proc.stdout[-3000:]
    recs = [json.loads(l) for l in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in recs] == [2, 4]
    assert all(r["stragglers"] == 1 and r["step_time_max_s"] >= 0.5 for r in recs), recs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("health/stragglers")] == [1, 1]
    beats = [json.loads((tmp_path / "tb" / "heartbeat" / f"rank_{r:05d}.json").read_text()) for r in (0, 1)]
    assert [(b["iteration"], b["phase"]) for b in beats] == [(4, "training ended (exit code 0)")] * 2, beats
