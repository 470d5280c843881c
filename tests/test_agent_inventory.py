"""The simulated GPU inventory: specs such as "2xA100-80GB,1xT4-16GB"."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents import parse_gpus
from agents.inventory import simulated_gpu_stats
from gpucp.gpus import COMPUTE_CAPABILITY


def test_parses_counts_models_and_memory_in_order() -> None:
    gpus = parse_gpus("2xA100-80GB, 1xT4-16GB,h100-80gb", "w7")
    assert [(g.index, g.name, g.memory_total_mb, g.memory_free_mb, g.compute_capability) for g in gpus] == [
        (0, "NVIDIA A100 80GB", 81920, 81920, 8.0),
        (1, "NVIDIA A100 80GB", 81920, 81920, 8.0),
        (2, "NVIDIA T4 16GB", 16384, 16384, 7.5),
        (3, "NVIDIA H100 80GB", 81920, 81920, 9.0),
    ]
    assert [g.uuid for g in gpus] == [f"GPU-sim-w7-{i}" for i in range(4)]
    assert not any(g.mig for g in gpus)


def test_empty_spec_means_no_gpus() -> None:
    assert parse_gpus("", "w") == []


@pytest.mark.parametrize(
    "spec", ["A100", "2xA100", "2xA100-80", "x A100-80GB", "2xA100-80GB,", "0xA100-80GB", "A100-0GB"]
)
def test_bad_spec_names_the_expected_format(spec: str) -> None:
    with pytest.raises(ValueError, match=r"\[COUNTx\]MODEL-MEMGB"):
        parse_gpus(spec, "w")


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown GPU model 'K80'.*known models: V100, T4, .*B200"):
        parse_gpus("1xK80-12GB", "w")


@given(
    st.lists(
        st.tuples(st.integers(1, 8), st.sampled_from(sorted(COMPUTE_CAPABILITY)), st.integers(1, 192)),
        min_size=1,
        max_size=6,
    )
)
def test_any_valid_spec_yields_every_gpu_with_consecutive_indices(entries: list[tuple[int, str, int]]) -> None:
    spec = ",".join(f"{count}x{model}-{memory}GB" for count, model, memory in entries)
    gpus = parse_gpus(spec, "w")
    expected = [(model, memory * 1024) for count, model, memory in entries for _ in range(count)]
    assert [(g.name.split()[1], g.memory_total_mb) for g in gpus] == expected
    assert [g.index for g in gpus] == list(range(len(gpus)))


def test_stats_show_busy_gpus_working_and_the_rest_idle() -> None:
    stats = simulated_gpu_stats(parse_gpus("3xL4-24GB", "w"), busy={1})
    assert [s.index for s in stats] == [0, 1, 2]
    assert [s.utilization > 0 for s in stats] == [False, True, False]
    assert stats[1].memory_used_mb > 0 and stats[0].memory_used_mb == 0
    assert all(s.healthy for s in stats)
