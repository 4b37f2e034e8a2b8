"""bench/bench_stages.py: py-spy's collapsed stacks put in the packet loop's stages."""

from __future__ import annotations

from bench.bench_stages import OTHER, parse_raw, report, stage_of

LOOP = "run (portguard/service/daemon.py:308);Worker._loop (portguard/service/worker.py:291)"
READ = f"{LOOP};QueueReader.read (portguard/io/nfqueue.py:172)"
PACKET = f"{READ};QueueReader._on_packet (portguard/io/nfqueue.py:204)"


def test_a_sample_goes_to_its_innermost_stage() -> None:
    assert stage_of(["Worker._loop", "QueueReader.read"]) == "read (netlink, message parsing)"
    assert stage_of(["QueueReader.read", "QueueReader._on_packet", "Gate.handle",
                     "RuleSet.first_match"]) == "policy"  # fmt: skip
    assert stage_of(["QueueReader._on_packet", "Gate.handle", "decode_syn"]) == "decode"
    assert stage_of(["QueueReader._on_packet", "Gate.handle"]).startswith("gate")
    assert stage_of(["Worker._loop", "Periodic.run_if_due"]) == OTHER


def test_raw_output_is_counted_by_stage_and_waiting_is_left_out() -> None:
    raw = "\n".join([
        f"{PACKET};QueueReader._give_verdict (portguard/io/nfqueue.py:214);"
        "apply_verdict (portguard/io/nfqueue.py:109) 6",
        f"{PACKET};Worker.decide (portguard/service/worker.py:201);"
        "Gate.handle (portguard/core/gate.py:120);"
        "decode_syn (portguard/core/packet/decode.py:80) 3",
        f"{LOOP};EpollSelector.select (selectors.py:468) 375",
        "not a stack line",
        f"{READ} 1",
    ])  # fmt: skip
    shares = parse_raw(raw)
    assert shares == {"verdict": 6, "decode": 3, "read (netlink, message parsing)": 1}
    table = report(shares, cpu=0.5, decided=10_000)
    assert "50.0 µs a decision" in table and "| verdict | 60.0% | 30.00 |" in table


def test_the_batch_reader_s_frames_have_their_stages() -> None:
    assert stage_of(["Worker._loop", "BatchReader.read"]).startswith("read")
    assert stage_of(["BatchReader.read", "BatchReader._answer", "BatchReader._send"]) == "verdict"
    assert stage_of(["BatchReader._answer", "BatchReader._decide_one", "Worker.decide",
                     "Gate.handle", "decode_syn"]) == "decode"  # fmt: skip
    assert stage_of(["BatchReader._answer", "LogProcess.add_many"]) == "handoff"
    assert stage_of(["BatchReader._answer", "BatchReader._decide_one"]).startswith("callback")
