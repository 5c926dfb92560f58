"""The forward plan: V block and split, from what the host knows without reading the device."""
import pytest

from gdnc.plan import ForwardPlan, SplitConfig, plan_forward, prepare_heads_per_cta, segment_count

H100_SMS = 132


@pytest.mark.parametrize("tokens,sequences,h_v,expected", [
    (32768, 1, 8, ForwardPlan(128, 2048, 16)),    # 8 CTAs a segment: sixteen fill one wave
    (32768, 1, 32, ForwardPlan(128, 8192, 4)),    # 32 CTAs a segment: four
    (32768, 2, 8, ForwardPlan(128, 2048, 16)),    # two sequences of any lengths: slots for either to hold all
    (32768, 4, 8, ForwardPlan(128, 2048, 16)),    # a batch using a quarter of the GPU: four segments each
    (32768, 4, 32, ForwardPlan(128)),             # a batch that fills the GPU: unsplit
    (8192, 4, 8, ForwardPlan(32)),                # a batch of short sequences: unsplit; 128 CTAs at 32 columns
    (32768, 8, 8, ForwardPlan(64)),               # 8 × 4096: 128 CTAs at 64 columns
    (8192, 8, 16, ForwardPlan(128)),              # 128 CTAs; 256 at 64 columns
    (32768, 1, 64, ForwardPlan(128, 16384, 2)),   # 64 CTAs a segment: two
    (32768, 1, 96, ForwardPlan(128, 8192, 4)),    # 96 CTAs a segment: three waves of four, not one of 512 chunks
    (32768, 1, 48, ForwardPlan(128, 3008, 11)),   # 48 CTAs a segment: four full waves of 11, not one of two (96 of 132)
    (32768, 2, 48, ForwardPlan(128, 3008, 11)),
    (2048, 1, 48, ForwardPlan(128, 1024, 2)),     # short: two segments in one wave beat three waves of 4 chunks
    (8192, 1, 8, ForwardPlan(128, 512, 16)),
    (2048, 1, 8, ForwardPlan(128, 256, 8)),       # the shortest call that is split: segments of 4 chunks
    (1024, 1, 8, ForwardPlan(32)),                # shorter: unsplit, at the narrowest block that fits one wave
    (1024, 4, 8, ForwardPlan(32)),                # 128 CTAs at 32 columns
    (1024, 4, 16, ForwardPlan(64)),               # 128 CTAs at 64 columns, 256 at 32
])
def test_default_heuristic(tokens, sequences, h_v, expected):
    assert plan_forward(tokens, sequences, h_v, H100_SMS) == expected


def test_minimum_segment_length():
    config = SplitConfig(min_tokens=0)
    assert plan_forward(1024, 1, 8, H100_SMS, config=config) == ForwardPlan(128, 256, 4)
    assert plan_forward(200, 1, 8, H100_SMS, config=config) == ForwardPlan(32)  # shorter than one segment


def test_segment_count_minimises_waves_times_segment_length():
    config = SplitConfig()
    assert segment_count(512, 48, H100_SMS, config) == 11  # four full waves of 47 chunks: 4 × (47 + 3) < 256 + 3
    assert segment_count(512, 16, H100_SMS, config) == 8   # one wave of 8 × 16 CTAs
    assert segment_count(512, 48, H100_SMS, SplitConfig(wave_overhead_chunks=1000)) == 2  # waves dear: one
    assert segment_count(512, 132, H100_SMS, config) == 1  # a segment fills the GPU: each split only adds waves
    assert segment_count(3, 8, H100_SMS, config) == 1      # shorter than min_segment_chunks
    with pytest.raises(ValueError, match="wave_overhead_chunks must be >= 0, got -1"):
        SplitConfig(wave_overhead_chunks=-1).check()


def test_prepare_shares_k_where_the_shared_grid_fills_the_gpu():
    resident = H100_SMS * 4
    assert prepare_heads_per_cta(32768, 1, 2, 4, resident) == 4    # 513 slots × 2 k heads: 1026 CTAs
    assert prepare_heads_per_cta(2048, 1, 2, 4, resident) == 1     # 66 CTAs sharing; 264 one head each
    assert prepare_heads_per_cta(2048, 1, 16, 3, resident) == 3    # 16/48: 528 CTAs, one full wave
    assert prepare_heads_per_cta(32768, 1, 16, 1, resident) == 1   # no GVA: nothing to share


def test_config_overrides_and_is_checked():
    assert plan_forward(32768, 1, 8, H100_SMS, config=SplitConfig(segment_len=1024)) == ForwardPlan(128, 1024, 32)
    assert plan_forward(32768, 1, 8, H100_SMS, config=SplitConfig(segment_len=0)) == ForwardPlan(32)
    with pytest.raises(ValueError, match="multiple of the chunk"):
        plan_forward(32768, 1, 8, H100_SMS, config=SplitConfig(segment_len=1000))
    with pytest.raises(ValueError, match="tau must be negative"):
        plan_forward(32768, 1, 8, H100_SMS, config=SplitConfig(tau=0.0))
    with pytest.raises(ValueError, match="min_batch_sequence_tokens must be >= 0 .* got 2048, -1, 2"):
        plan_forward(32768, 1, 8, H100_SMS, config=SplitConfig(min_batch_sequence_tokens=-1))


def test_only_blocks_that_divide_v():
    assert plan_forward(32768, 1, 8, H100_SMS, v_dim=64) == ForwardPlan(64, 2048, 16)  # 8 CTAs a segment at 64
    assert plan_forward(1024, 8, 16, H100_SMS, v_dim=64) == ForwardPlan(64)
    with pytest.raises(ValueError, match=r"no forward V block \(32, 64, 128\) divides v_dim=48"):
        plan_forward(4096, 1, 8, H100_SMS, v_dim=48)
