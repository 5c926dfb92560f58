"""The forward plan: V block and split, from what the host knows without reading the device, and
the policy that turns it into the kernels' configs."""
import pytest

from gdnc.emit.config import BackwardConfig, ForwardConfig, Heads, PrepareConfig
from gdnc.runtime.plan import Layout, Plan, Split, SplitConfig, layout_forward, prepare_heads_per_cta, segment_count
from gdnc.runtime.policy import Call, HeuristicPolicy

H100_SMS = 132


@pytest.mark.parametrize("tokens,sequences,h_v,expected", [
    (32768, 1, 8, Layout(128, 2048, 16)),    # 8 CTAs a segment: sixteen fill one wave
    (32768, 1, 32, Layout(128, 8192, 4)),    # 32 CTAs a segment: four
    (32768, 2, 8, Layout(128, 2048, 16)),    # two sequences of any lengths: slots for either to hold all
    (32768, 4, 8, Layout(128, 2048, 16)),    # a batch using a quarter of the GPU: four segments each
    (32768, 4, 32, Layout(128)),             # a batch that fills the GPU: unsplit
    (8192, 4, 8, Layout(32)),                # a batch of short sequences: unsplit; 128 CTAs at 32 columns
    (32768, 8, 8, Layout(64)),               # 8 × 4096: 128 CTAs at 64 columns
    (8192, 8, 16, Layout(128)),              # 128 CTAs; 256 at 64 columns
    (32768, 1, 64, Layout(128, 16384, 2)),   # 64 CTAs a segment: two
    (32768, 1, 96, Layout(128, 8192, 4)),    # 96 CTAs a segment: three waves of four, not one of 512 chunks
    (32768, 1, 48, Layout(128, 3008, 11)),   # 48 CTAs a segment: four full waves of 11, not one of two (96 of 132)
    (32768, 2, 48, Layout(128, 3008, 11)),
    (2048, 1, 48, Layout(128, 1024, 2)),     # short: two segments in one wave beat three waves of 4 chunks
    (8192, 1, 8, Layout(128, 512, 16)),
    (2048, 1, 8, Layout(128, 256, 8)),       # the shortest call that is split: segments of 4 chunks
    (1024, 1, 8, Layout(32)),                # shorter: unsplit, at the narrowest block that fits one wave
    (1024, 4, 8, Layout(32)),                # 128 CTAs at 32 columns
    (1024, 4, 16, Layout(64)),               # 128 CTAs at 64 columns, 256 at 32
])
def test_default_heuristic(tokens, sequences, h_v, expected):
    assert layout_forward(tokens, sequences, h_v, H100_SMS) == expected


def test_minimum_segment_length():
    config = SplitConfig(min_tokens=0)
    assert layout_forward(1024, 1, 8, H100_SMS, config=config) == Layout(128, 256, 4)
    assert layout_forward(200, 1, 8, H100_SMS, config=config) == Layout(32)  # shorter than one segment


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
    assert layout_forward(32768, 1, 8, H100_SMS, config=SplitConfig(segment_len=1024)) == Layout(128, 1024, 32)
    assert layout_forward(32768, 1, 8, H100_SMS, config=SplitConfig(segment_len=0)) == Layout(32)
    with pytest.raises(ValueError, match="multiple of the chunk"):
        layout_forward(32768, 1, 8, H100_SMS, config=SplitConfig(segment_len=1000))
    with pytest.raises(ValueError, match="tau must be negative"):
        layout_forward(32768, 1, 8, H100_SMS, config=SplitConfig(tau=0.0))
    with pytest.raises(ValueError, match="min_batch_sequence_tokens must be >= 0 .* got 2048, -1, 2"):
        layout_forward(32768, 1, 8, H100_SMS, config=SplitConfig(min_batch_sequence_tokens=-1))


def test_only_blocks_that_divide_v():
    assert layout_forward(32768, 1, 8, H100_SMS, v_dim=64) == Layout(64, 2048, 16)  # 8 CTAs a segment at 64
    assert layout_forward(1024, 8, 16, H100_SMS, v_dim=64) == Layout(64)
    with pytest.raises(ValueError, match=r"no forward V block \(32, 64, 128\) divides V=48"):
        layout_forward(4096, 1, 8, H100_SMS, v_dim=48)


def test_the_heuristic_policy_plans_configs():
    """The plan carries the configs the kernels are built with: the layout's block and split, the
    prepare's heads a CTA; a policy's fixed fields override the heuristic's choice."""
    long_call = Call(Heads(2, 8), 32768, 1, H100_SMS)
    # the backward's states pass is unsplit: 32 CTAs of 32 columns fill one wave of 132 SMs at most
    narrow_states = ForwardConfig(block_v=32, store_states=True)
    # the backward's split: one CTA a value head, 16 segments of 8 fill one wave as the forward's do
    assert HeuristicPolicy().plan(long_call) == Plan(ForwardConfig(block_v=128), PrepareConfig(heads_per_cta=4),
                                                     Split(2048, 16), states=narrow_states,
                                                     backward_split=Split(2048, 16))
    short = HeuristicPolicy().plan(Call(Heads(2, 8), 1024, 1, H100_SMS))
    assert short == Plan(ForwardConfig(block_v=32), PrepareConfig(heads_per_cta=1), states=narrow_states)
    assert HeuristicPolicy().plan(Call(Heads(16, 64), 32768, 8, H100_SMS)).states.block_v == 128
    assert short.backward_kernels() == {"states": ("gdn_forward", narrow_states),
                                        "backward": ("gdn_backward", BackwardConfig())}
    with pytest.raises(ValueError, match="store_states=True"):
        Plan(ForwardConfig(), PrepareConfig(), states=ForwardConfig())
    assert set(short.kernels()) == {"gdn_prepare", "gdn_forward"}
    assert set(HeuristicPolicy().plan(long_call).kernels()) == {"gdn_prepare", "gdn_forward", "cp_plan", "cp_chain"}
    fixed = HeuristicPolicy(split=SplitConfig(segment_len=256, tau=-20.0), forward={"block_v": 64, "m_role": "prepare"},
                            prepare={"inverse": "substitution", "heads_per_cta": 1})
    assert fixed.plan(long_call) == Plan(ForwardConfig(block_v=64, m_role="prepare"),
                                         PrepareConfig(inverse="substitution"), Split(256, 128, tau=-20.0),
                                         states=ForwardConfig(block_v=64, m_role="prepare", store_states=True),
                                         backward_split=Split(256, 128, tau=-20.0))
    assert set(fixed.plan(long_call).backward_kernels()) == {"states", "backward", "state_gradient", "forward", "plan",
                                                             "chain"}
    unsplit = HeuristicPolicy(split=SplitConfig(segment_len=0), forward={"block_v": 128}).plan(long_call)
    assert unsplit.split is None and unsplit.forward.block_v == 128


def test_candidates_are_every_config_the_plans_may_use():
    """What gdnc build compiles: the forward at every width the layout may pick, the prepare one head
    a CTA and (GVA) a whole group, the context-parallel kernels, the backward's states pass at every
    width and the backward; every plan's configs among them, its backward's too."""
    policy = HeuristicPolicy()
    for heads in (Heads(2, 8), Heads(16, 16), Heads(16, 48)):
        candidates = policy.candidates(heads)
        assert len(candidates) == len(set(candidates)) == 3 + (2 if heads.group > 1 else 1) + 2 + 3 + 2
        for tokens in (64, 1024, 2048, 8192, 32768):
            for sequences in (1, 2, 4, 8):
                plan = policy.plan(Call(heads, tokens * sequences, sequences, H100_SMS))
                assert set(plan.kernels().items()) <= set(candidates)
                assert set(plan.backward_kernels().values()) <= set(candidates)
    assert HeuristicPolicy(forward={"block_v": 64}).candidates(Heads(2, 8))[0] == ("gdn_forward",
                                                                                   ForwardConfig(block_v=64))


def test_policy_fields_are_checked():
    with pytest.raises(ValueError, match=r"HeuristicPolicy.forward: \['blockv'\] are not ForwardConfig fields"):
        HeuristicPolicy(forward={"blockv": 64})
    with pytest.raises(ValueError, match="tau must be negative"):
        HeuristicPolicy(split=SplitConfig(tau=1.0))
    with pytest.raises(ValueError, match="Split needs segment_len a positive multiple of 64"):
        Split(100, 4)
