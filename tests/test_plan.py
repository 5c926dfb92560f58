import pytest

from gdnc.plan import SplitConfig, plan_segment_len

H100_SMS = 132


@pytest.mark.parametrize("seqlens,h_v,expected", [
    ([0, 32768], 32, 10944),          # 64 CTAs for 132 SMs: three segments
    ([0, 32768], 8, 3648),            # 16 CTAs: nine segments
    ([0, 8192, 16384, 24576, 32768], 32, 0),  # 4 sequences x 32 heads x 2 blocks fill the GPU
    ([0, 1024], 8, 512),              # short: the minimum segment length decides
    ([0, 300], 8, 0),                 # shorter than one minimum segment: no split
])
def test_default_heuristic(seqlens, h_v, expected):
    assert plan_segment_len(seqlens, h_v, v_blocks=2, sm_count=H100_SMS) == expected


def test_config_overrides_and_is_checked():
    assert plan_segment_len([0, 32768], 8, 2, H100_SMS, config=SplitConfig(segment_len=4096)) == 4096
    assert plan_segment_len([0, 32768], 8, 2, H100_SMS, config=SplitConfig(segment_len=0)) == 0
    with pytest.raises(ValueError, match="multiple of the chunk"):
        plan_segment_len([0, 32768], 8, 2, H100_SMS, config=SplitConfig(segment_len=1000))
