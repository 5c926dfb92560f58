"""The forward plan: V block and split, from what the host knows without reading the device."""
import pytest

from gdnc.plan import ForwardPlan, SplitConfig, plan_forward

H100_SMS = 132


@pytest.mark.parametrize("tokens,sequences,h_v,expected", [
    (32768, 1, 8, ForwardPlan(64, 4096, 8)),      # 16 CTAs a segment: eight fill one wave
    (32768, 1, 32, ForwardPlan(64, 16384, 2)),    # 64 CTAs a segment: two
    (32768, 2, 8, ForwardPlan(64, 4096, 8)),      # two sequences of any lengths: slots for either to hold all
    (32768, 4, 8, ForwardPlan(32)),               # a batch: unsplit; 128 CTAs at the narrow block fit one wave
    (32768, 8, 8, ForwardPlan(64)),               # 128 CTAs: the GPU is full
    (32768, 1, 64, ForwardPlan(64)),              # 128 CTAs; a 32-wide block would need two waves
    (32768, 1, 48, ForwardPlan(64)),              # 96 CTAs a segment: no room for a second
    (8192, 1, 8, ForwardPlan(64, 1024, 8)),       # the shortest call that is split
    (4096, 1, 8, ForwardPlan(32)),                # shorter: unsplit, narrow fits
    (8192, 8, 16, ForwardPlan(64)),               # 256 CTAs at 64, more at 32
])
def test_default_heuristic(tokens, sequences, h_v, expected):
    assert plan_forward(tokens, sequences, h_v, H100_SMS) == expected


def test_minimum_segment_length():
    config = SplitConfig(min_tokens=0)
    assert plan_forward(1024, 1, 8, H100_SMS, config=config) == ForwardPlan(64, 512, 2)
    assert plan_forward(300, 1, 8, H100_SMS, config=config) == ForwardPlan(32)  # shorter than one segment


def test_config_overrides_and_is_checked():
    assert plan_forward(32768, 1, 8, H100_SMS, config=SplitConfig(segment_len=1024)) == ForwardPlan(64, 1024, 32)
    assert plan_forward(32768, 1, 8, H100_SMS, config=SplitConfig(segment_len=0)) == ForwardPlan(32)
    with pytest.raises(ValueError, match="multiple of the chunk"):
        plan_forward(32768, 1, 8, H100_SMS, config=SplitConfig(segment_len=1000))
    with pytest.raises(ValueError, match="tau must be negative"):
        plan_forward(32768, 1, 8, H100_SMS, config=SplitConfig(tau=0.0))
