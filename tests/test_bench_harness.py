"""The benchmark harness computes ratios and reports the machine (no timing assertions)."""

from bench.harness import Bench, machine_info


def test_ratio_and_markdown():
    bench = Bench("demo")
    fast = bench.time("fast", lambda: sum(range(10)), repeat=3)
    slow = bench.time("slow", lambda: sum(range(100_000)), repeat=3)
    ratio = bench.ratio("fast vs slow", fast, slow, target=1.0)
    assert len(fast.runs) == 3 and ratio.value == fast.median / slow.median
    speedup = bench.ratio("speed-up", fast, slow, target=2.0, higher_is_better=True)
    assert speedup.value == slow.median / fast.median
    text = bench.markdown()
    assert "fast vs slow" in text and "<= 1" in text and ">= 2" in text
    assert '"ratio"' in bench.to_json()


def test_machine_info_names_torch_and_cores():
    info = machine_info()
    assert info["torch"] and int(info["cpu_cores"]) >= 1 and "blas" in info
