"""N:M options, Gumbel straight-through, dynamic inter-block activation, expansion-corrosion, masked blocks."""

from __future__ import annotations

import pytest
import torch

from srcompress.models.pruning.masked import DepthMasker
from srcompress.models.pruning.masks import NMGumbelGates, gumbel_hard, neighbour_index, nm_options, tau_at
from srcompress.models.teachers.tiny import tiny_sd3_teacher


def test_nm_options_enumerate_every_n_of_m():
    o = nm_options(2, 4)
    assert o.shape == (6, 4) and torch.equal(o.sum(1), torch.full((6,), 2.0))
    assert len({tuple(r.tolist()) for r in o}) == 6
    assert o[0].tolist() == [1, 1, 0, 0] and o[-1].tolist() == [0, 0, 1, 1]  # fixed, documented order
    assert nm_options(1, 3).tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match="0 < N <= M"):
        nm_options(3, 2)


def test_gumbel_is_hard_forward_and_soft_backward():
    logits = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    g = torch.Generator().manual_seed(0)
    y = gumbel_hard(logits, tau=1.0, generator=g)
    assert torch.equal(y.detach().sum(-1), torch.ones(1)) and set(y.detach().flatten().tolist()) <= {0.0, 1.0}
    (y * torch.tensor([[1.0, 2.0, 3.0]])).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0  # straight-through gradient
    # same generator state → same draw; frequencies follow the softmax
    draws = torch.stack([gumbel_hard(torch.tensor([0.0, 1.0]), 1.0, torch.Generator().manual_seed(s))
                         for s in range(2000)])
    freq = draws.mean(0)[1].item()
    assert abs(freq - torch.softmax(torch.tensor([0.0, 1.0]), 0)[1].item()) < 0.04


def test_neighbour_rule_hand_worked():
    options = nm_options(2, 4)  # 0:[1100] 1:[1010] 2:[1001] 3:[0110] 4:[0101] 5:[0011]
    logits = torch.tensor([0.0, 0.1, 0.5, 0.2, 0.9, 3.0])
    # chosen [1100]: overlapping, different → {1010, 1001, 0110, 0101}; 5 ([0011]) does not overlap
    assert neighbour_index(logits, options, 0) == 4
    # chosen [0011]: candidates {1010, 1001, 0110, 0101}, best logit 0.9 at 4
    assert neighbour_index(logits, options, 5) == 4
    tie = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    picks = {neighbour_index(tie, options, 0, torch.Generator().manual_seed(s)) for s in range(20)}
    assert picks == {1, 2}  # seeded tie-break, both reachable
    assert neighbour_index(torch.zeros(1), nm_options(4, 4), 0) == 0  # N = M: nothing else exists


def test_expansion_corrosion_moves_depth_between_paired_groups():
    gates = NMGumbelGates(8, 2, 4, dynamic=True, expansion_corrosion=True)
    seen = set()
    for s in range(60):
        mask = gates.sample(tau=1.0, generator=torch.Generator().manual_seed(s)).detach()
        a, b = mask[:4].sum().item(), mask[4:].sum().item()
        assert set(mask.tolist()) <= {0.0, 1.0} and a + b == 4  # budget conserved across the pair
        seen.add((a, b))
    assert seen == {(1.0, 3.0), (2.0, 2.0), (3.0, 1.0)}  # corrosion, keep, expansion all happen
    plain = NMGumbelGates(8, 2, 4, expansion_corrosion=False)
    for s in range(20):
        m = plain.sample(1.0, torch.Generator().manual_seed(s)).detach()
        assert m[:4].sum() == 2 and m[4:].sum() == 2  # plain TinyFusion: exactly N per group


def test_gates_learn_and_ema_argmax_gives_the_final_mask():
    gates = NMGumbelGates(4, 2, 4, expansion_corrosion=False, ema=0.9)
    opt = torch.optim.SGD(gates.parameters(), lr=0.05)
    target = torch.tensor([0.0, 1.0, 1.0, 0.0])
    g = torch.Generator().manual_seed(0)
    for step in range(200):
        mask = gates.sample(tau_at(step, 200), g)
        loss = ((mask - target) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        gates.update_ema()
    assert gates.final_mask().tolist() == target.tolist()
    assert gates.probabilities().shape == (1, 6)
    with pytest.raises(ValueError, match="must divide"):
        NMGumbelGates(6, 2, 4)
    assert tau_at(0, 100) == 4.0 and abs(tau_at(99, 100) - 0.1) < 1e-9


def test_tinysr_decision_hand_worked():
    """EMA option logits and pair gates set by hand: the TinySR decision applies the pair's strongest
    transformation to each group's best option and its neighbour; the group decision ignores the pair gate;
    a tie that includes "keep" (an untrained pair gate) keeps."""
    gates = NMGumbelGates(8, 2, 4)  # options: 0:[1100] 1:[1010] 2:[1001] 3:[0110] 4:[0101] 5:[0011]
    with torch.no_grad():
        gates.ema_logits.copy_(torch.tensor([[3.0, 2.0, 0, 0, 0, 0], [0, 0, 0, 1.0, 0, 2.0]]))
        # group 0: best [1100], neighbour [1010]; group 1: best [0011], neighbour [0110]
        assert gates.final_mask("group").tolist() == [1, 1, 0, 0, 0, 0, 1, 1]
        assert gates.final_mask("tinysr").tolist() == [1, 1, 0, 0, 0, 0, 1, 1]  # untrained pair gate: keep
        gates.ema_pair_logits.copy_(torch.tensor([[0.5, 0.1, 0.2]]))  # ∩ for the first, ∪ for the second
        assert gates.final_mask("tinysr").tolist() == [1, 0, 0, 0, 0, 1, 1, 1]
        gates.ema_pair_logits.copy_(torch.tensor([[0.1, 0.2, 0.5]]))  # ∪ for the first, ∩ for the second
        assert gates.final_mask("tinysr").tolist() == [1, 1, 1, 0, 0, 0, 1, 0]
        assert gates.final_mask("group").tolist() == [1, 1, 0, 0, 0, 0, 1, 1]
        assert gates.pair_probabilities().shape == (1, 3)
    plain = NMGumbelGates(8, 2, 4, expansion_corrosion=False)
    with torch.no_grad():
        plain.ema_pair_logits.fill_(5.0)
        plain.ema_pair_logits[0, 0] = 9.0
    assert plain.final_mask("tinysr").tolist() == plain.final_mask("group").tolist()  # no pairs: same
    with pytest.raises(ValueError, match="tinysr | group"):
        gates.final_mask("best")


def test_tinysr_decision_moves_depth_to_where_the_teacher_needs_it():
    """8 blocks, 2:4, blocks 1-3 exact identities (all redundancy in the first group): the learned search's
    TinySR decision keeps one block of the first group and three of the second — a mask the group decision
    cannot express (it keeps 2 + 2, so an identity block stays and a working one goes) — and that mask
    reproduces the teacher better."""
    from srcompress.models.pruning.search import MaskSearch
    from tests.tasks.test_search import identity_blocks_teacher_model

    teacher = identity_blocks_teacher_model((1, 2, 3), num_layers=8)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 16, 16, 16, generator=g)
    with torch.no_grad():
        target = teacher.restore_tile(z)
    model = MaskSearch(identity_blocks_teacher_model((1, 2, 3), num_layers=8), n=2, m=4, lora_rank=0, ema=0.9)
    opt = torch.optim.AdamW(model.param_groups(1e-2, 0.0), lr=1e-2)
    for step in range(40):
        idx = torch.randint(16, (4,), generator=g)
        loss = (model(z[idx], tau_at(step, 40), g) - target[idx]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.gates.update_ema()
    tinysr, group = model.gates.final_mask("tinysr"), model.gates.final_mask("group")
    assert tinysr.tolist() == [1, 0, 0, 0, 1, 1, 1, 0], tinysr
    assert group[:4].sum() == group[4:].sum() == 2
    with torch.no_grad():
        err = {name: (model(z, mask=m) - target).abs().mean().item() for name, m in (("tinysr", tinysr), ("group", group))}
    assert err["tinysr"] < 0.9 * err["group"], err  # one working block dropped instead of two


@torch.no_grad()
def test_a_masked_block_with_m_zero_is_exactly_the_identity():
    t = tiny_sd3_teacher(num_layers=4, tile=16).eval()
    z = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    masker = DepthMasker(t)
    with masker.masked(torch.ones(4)):
        full = t.restore_latent(z)
    assert torch.equal(full, t.restore_latent(z))  # all ones: the teacher itself
    with masker.masked(masker.skipping(1)), t.capture() as feats:  # capture sees the blended output
        t.restore_latent(z)
    assert torch.equal(feats["transformer_blocks.1"]["output"], feats["transformer_blocks.1"]["input"])
    ref = t.backbone(hidden_states=z, encoder_hidden_states=t.prompt_embeds.expand(2, -1, -1),
                     pooled_projections=t.pooled_prompt_embeds.expand(2, -1),
                     timestep=torch.full((2,), 1000.0), skip_layers=[1]).sample
    with masker.masked(masker.skipping(1)):
        assert torch.allclose(t.velocity(z), ref, atol=1e-6)  # same as diffusers' own skip_layers
    with masker.masked(torch.zeros(4)):  # every block skipped, the last (context_pre_only) one too
        assert torch.isfinite(t.restore_latent(z)).all()
    with pytest.raises(ValueError, match="4 prunable blocks"):
        with masker.masked(torch.ones(3)):
            pass


@torch.no_grad()
def test_block_scores_shapes_directions_and_a_do_nothing_block():
    from srcompress.models.pruning.redundancy import SCORES, block_scores, importance, rank, top_k_mask

    t = tiny_sd3_teacher(num_layers=4, tile=16).eval()
    g = torch.Generator().manual_seed(0)
    z_l, z_h = torch.randn(3, 16, 16, 16, generator=g), torch.randn(3, 16, 16, 16, generator=g)
    # make block 2 do nothing: zero the adaLN gates of its residual branches, image and context streams
    blk = t.backbone.transformer_blocks[2]
    for lin in (blk.norm1.linear, blk.norm1_context.linear):
        torch.nn.init.zeros_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
    s = block_scores(t, z_l, z_h)
    assert set(s) == set(SCORES) and all(v.shape == (4, 3) for v in s.values())
    assert torch.allclose(s["block_influence"][2], torch.zeros(3), atol=1e-6)
    assert torch.allclose(s["removal_l1"][2], torch.zeros(3), atol=1e-6)
    assert torch.all(s["removal_psnr_y"][2] >= 99.0)  # removing it changes nothing
    assert (s["pgp_kl"] >= -1e-6).all() and (s["pgp_cos"] >= -1e-6).all()
    imp = importance(s)
    assert rank(imp["removal_l1"])[0] == 2 and rank(imp["removal_psnr_y"])[0] == 2
    assert top_k_mask(imp["block_influence"], 3)[2] == 0 and top_k_mask(imp["block_influence"], 3).sum() == 3
    with pytest.raises(ValueError, match="increasing grid"):
        block_scores(t, z_l, z_h, sigmas=(1.0, 0.5))
