"""Coverage-guided fuzzing of the adapter reader/parser/resolver with atheris.

Run (bounded, as CI does):  .venv/bin/python -m fuzz.fuzz_adapter -atheris_runs=3000
Longer run:                 .venv/bin/python -m fuzz.fuzz_adapter -max_total_time=3600 fuzz/corpus
Prints ``FUZZ-SUMMARY {...}`` with the number of inputs tried; any exception other than
HadaKron's documented error types crashes the run with the input saved by libFuzzer.
"""

from __future__ import annotations

import json
import sys

import atheris

with atheris.instrument_imports():
    from fuzz.targets import adapter_file_target, names_target, structured_file_bytes, text_target

COUNT = {"inputs": 0}
SEEDS = [
    structured_file_bytes(
        {
            "lora_unet_blocks_0_self_attn_q.lora_up.weight": {"dtype": "F32", "shape": [8, 1], "data_offsets": [0, 32]},
            "lora_unet_blocks_0_self_attn_q.lora_down.weight": {
                "dtype": "F32",
                "shape": [1, 8],
                "data_offsets": [32, 64],
            },
        },
        b"\x00" * 64,
    ),
]


def one_input(data: bytes) -> None:
    COUNT["inputs"] += 1
    provider = atheris.FuzzedDataProvider(data)
    choice = provider.ConsumeIntInRange(0, 3)
    if choice == 0:
        adapter_file_target(provider.ConsumeBytes(provider.remaining_bytes()))
    elif choice == 1:
        names_target(provider.ConsumeUnicodeNoSurrogates(200))
    elif choice == 2:
        text_target(provider.ConsumeUnicodeNoSurrogates(200))
    else:
        adapter_file_target(_mutated_seed(provider))


def _mutated_seed(provider) -> bytes:
    seed = bytearray(SEEDS[0])
    for _ in range(provider.ConsumeIntInRange(0, 8)):
        if not provider.remaining_bytes():
            break
        seed[provider.ConsumeIntInRange(0, len(seed) - 1)] = provider.ConsumeInt(1) & 0xFF
    return bytes(seed)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    try:
        atheris.Fuzz()
    finally:
        sys.stdout.write("FUZZ-SUMMARY " + json.dumps(COUNT) + "\n")


if __name__ == "__main__":
    main()
