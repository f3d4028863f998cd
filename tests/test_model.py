"""Specifications of the Mega-AudioFormer model, its masking and loss, the classifier and checkpoints."""

import json

import pytest
import torch

from mega_audio.models.classifier import AudioClassifier, layer_index
from mega_audio.models.config import PRESETS, ModelConfig, model_config
from mega_audio.models.flat import FlatTransformer
from mega_audio.models.layers import LevelHeads, Rotary, SelfAttention, SummaryMixing, apply_rotary
from mega_audio.models.masking import IGNORE_INDEX, clip_halves, contrastive_loss, mask_tokens, mlm_loss
from mega_audio.models.mega import MegaAudioFormer, parameter_counts

CODEBOOK = 1024


def random_codes(B: int, T: int, n_q: int, seed: int = 0, codebook: int = CODEBOOK) -> torch.Tensor:
    return torch.randint(0, codebook, (B, T, n_q), generator=torch.Generator().manual_seed(seed))


def tiny(n_q: int = 4, **overrides) -> ModelConfig:
    return model_config("tiny", n_q=n_q, codebook_size=CODEBOOK, **overrides)


# every global encoder: (block, mixer)
GLOBAL_ENCODERS = [(block, mixer) for block in ("transformer", "branchformer") for mixer in ("attention", "summary_mixing")]


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Tiny ops gain nothing from threads, and spinning threads crawl when other jobs share the cores."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("n_q", [2, 16])
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_logits_are_batch_time_level_codebook_for_every_preset_and_bitrate(preset, n_q):
    model = MegaAudioFormer(model_config(preset, n_q=n_q, codebook_size=CODEBOOK)).eval()
    codes = random_codes(2, 4, n_q)
    padding_mask = torch.tensor([[True] * 4, [True, True, False, False]])
    with torch.no_grad():
        logits, loss = model(codes, padding_mask)
    assert logits.shape == (2, 4, n_q, CODEBOOK)
    assert loss is None
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("n_q", [2, 16])
def test_flat_transformer_and_classifier_have_the_documented_shapes(n_q):
    config = tiny(n_q)
    codes, padding_mask = random_codes(3, 5, n_q), torch.ones(3, 5, dtype=torch.bool)
    assert FlatTransformer(config)(codes, padding_mask)[0].shape == (3, 5, n_q, CODEBOOK)
    classifier = AudioClassifier(config, n_classes=7)
    assert classifier(codes, padding_mask)[0].shape == (3, 7)
    assert classifier.embed(codes, padding_mask).shape == (3, config.d_global)


def test_mask_and_pad_ids_sit_just_after_the_codes():
    config = tiny()
    assert (config.mask_id, config.pad_id, config.vocab_size) == (CODEBOOK, CODEBOOK + 1, CODEBOOK + 2)


def _pad_with_garbage(codes: torch.Tensor, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Append `extra` frames of random codes that the padding mask marks invalid."""
    B, T, n_q = codes.shape
    padded = torch.cat([codes, random_codes(B, extra, n_q, seed=99)], dim=1)
    padding_mask = torch.zeros(B, T + extra, dtype=torch.bool)
    padding_mask[:, :T] = True
    return padded, padding_mask


@pytest.mark.parametrize("block,mixer", GLOBAL_ENCODERS)
@pytest.mark.parametrize("model_cls", [MegaAudioFormer, FlatTransformer])
def test_appending_padded_frames_leaves_outputs_of_valid_frames_unchanged(model_cls, block, mixer):
    model = model_cls(tiny(n_q=4, global_mixer=mixer, global_block=block)).eval()
    clip = random_codes(1, 6, 4)
    long_clip = random_codes(1, 9, 4, seed=1)  # batch-mate with no padding, so the mask really is used
    padded, padding_mask = _pad_with_garbage(clip, extra=3)
    batch = torch.cat([padded, long_clip])
    batch_mask = torch.cat([padding_mask, torch.ones(1, 9, dtype=torch.bool)])
    with torch.no_grad():
        alone, _ = model(clip)  # no padding at all: attn_mask=None path
        batched, _ = model(batch, batch_mask)
    torch.testing.assert_close(batched[0, :6], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[1:], model(long_clip)[0].detach(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("block,mixer", GLOBAL_ENCODERS)
def test_classifier_embedding_ignores_padded_frames(block, mixer):
    classifier = AudioClassifier(tiny(global_mixer=mixer, global_block=block), n_classes=3).eval()
    clip = random_codes(1, 6, 4)
    padded, padding_mask = _pad_with_garbage(clip, extra=5)
    with torch.no_grad():
        torch.testing.assert_close(classifier.embed(padded, padding_mask), classifier.embed(clip), atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer", ["0", "1", "mean", "last"])
def test_stats_pool_is_the_frames_mean_and_std_ignores_padded_ones_and_matches_the_probe_cache(layer):
    classifier = AudioClassifier(tiny(), n_classes=3, hidden=0, probe_layer=layer, probe_pool="stats").eval()
    clip = random_codes(2, 6, 4)
    padded, padding_mask = _pad_with_garbage(clip, extra=5)
    with torch.no_grad():
        states = classifier.frame_states(clip)
        embedding = classifier.embed(clip)
        torch.testing.assert_close(embedding, torch.cat([states.mean(1), states.std(1, correction=0)], -1),
                                   atol=1e-3, rtol=0)
        torch.testing.assert_close(classifier.embed(padded, padding_mask), embedding, atol=1e-5, rtol=0)
        # the frozen probe trains on every layer's cached embedding: each must be what the saved model computes
        cached = classifier.layer_embeddings(padded, padding_mask)[:, layer_index(layer, tiny().n_global_layers)]
    torch.testing.assert_close(cached, embedding, atol=1e-5, rtol=0)
    assert classifier.head(embedding).shape == (2, 3)


@pytest.mark.parametrize("layer", ["0", "1", "mean", "last"])
def test_attention_pool_starts_as_the_mean_learns_to_weigh_frames_and_ignores_padded_ones(layer):
    classifier = AudioClassifier(tiny(), n_classes=3, probe_layer=layer, probe_pool="attention").eval()
    pool = classifier.attention_pool
    clip = random_codes(1, 6, 4)
    padded, padding_mask = _pad_with_garbage(clip, extra=5)
    with torch.no_grad():
        states = classifier.frame_states(clip)
        mean_of_values = pool.value(pool.norm(states)).mean(dim=1)
        torch.testing.assert_close(classifier.embed(clip), mean_of_values, atol=1e-5, rtol=0)  # a zero query
        pool.query.normal_()  # what training does: some frames now weigh more
        weighted = classifier.embed(clip)
        torch.testing.assert_close(classifier.embed(padded, padding_mask), weighted, atol=1e-5, rtol=0)
    assert not torch.allclose(weighted, mean_of_values, atol=1e-3)


@pytest.mark.parametrize("block,mixer", GLOBAL_ENCODERS)
def test_shuffling_the_frames_of_a_clip_changes_its_embedding_for_every_global_encoder(block, mixer):
    classifier = AudioClassifier(tiny(global_mixer=mixer, global_block=block), n_classes=3).eval()
    clip = random_codes(1, 40, 4)
    shuffled = clip[:, torch.randperm(40, generator=torch.Generator().manual_seed(0))]
    padded, padding_mask = _pad_with_garbage(shuffled, extra=7)  # order matters, padding still does not
    with torch.no_grad():
        embedding, shuffled_embedding = classifier.embed(clip), classifier.embed(shuffled)
        torch.testing.assert_close(classifier.embed(padded, padding_mask), shuffled_embedding, atol=1e-5, rtol=0)
    assert not torch.allclose(embedding, shuffled_embedding, atol=1e-3)  # a set function would give exactly equal


def test_summary_mixing_mixes_valid_frames_but_ignores_padded_ones():
    mixer = SummaryMixing(dim=16).eval()
    x = torch.randn(1, 8, 16)
    valid = torch.tensor([[True] * 5 + [False] * 3])
    y = mixer(x, rope=None, valid=valid)

    changed_padding = x.clone()
    changed_padding[:, 5:] = torch.randn(1, 3, 16) * 10
    torch.testing.assert_close(mixer(changed_padding, None, valid)[:, :5], y[:, :5], atol=1e-6, rtol=0)

    changed_valid = x.clone()
    changed_valid[:, 4] += 1.0  # a valid frame: every other valid frame must see it through the summary
    assert not torch.allclose(mixer(changed_valid, None, valid)[:, 0], y[:, 0], atol=1e-4)


def test_every_frame_sees_frames_before_and_after_it():
    model = MegaAudioFormer(tiny()).eval()
    codes = random_codes(1, 8, 4)
    changed = codes.clone()
    changed[0, 4] = (changed[0, 4] + 1) % CODEBOOK
    with torch.no_grad():
        before, after = model(codes)[0], model(changed)[0]
    assert not torch.allclose(before[0, 0], after[0, 0], atol=1e-4)  # earlier frame sees a later one
    assert not torch.allclose(before[0, 7], after[0, 7], atol=1e-4)  # and the other way round


def test_rotary_attention_scores_depend_on_relative_not_absolute_position():
    head_dim = 32
    rotary = Rotary(head_dim)
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(i: int, j: int) -> torch.Tensor:
        cos, sin = rotary(torch.tensor([i, j]))
        q_i = apply_rotary(q[None], (cos[:1], sin[:1]))
        k_j = apply_rotary(k[None], (cos[1:], sin[1:]))
        return (q_i * k_j).sum()

    for i, j in [(0, 3), (5, 2), (7, 7)]:
        for shift in [1, 100, 1000]:
            torch.testing.assert_close(score(i + shift, j + shift), score(i, j), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(0, 3), score(0, 4), atol=1e-3)  # the offset does matter


def test_attention_output_is_unchanged_when_all_positions_shift():
    attention = SelfAttention(dim=32, n_heads=4).eval()
    rotary = Rotary(8)
    x = torch.randn(2, 10, 32)
    positions = torch.arange(10)
    with torch.no_grad():
        y = attention(x, rotary(positions), None)
        y_shifted = attention(x, rotary(positions + 500), None)
        y_reversed = attention(x, rotary(positions.flip(0)), None)
    torch.testing.assert_close(y_shifted, y, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(y_reversed, y, atol=1e-3)


def test_mask_tokens_masks_a_quarter_of_valid_tokens_and_never_padding():
    codes = random_codes(4, 50, 8)
    padding_mask = torch.ones(4, 50, dtype=torch.bool)
    padding_mask[1, 30:] = False
    inputs, targets = mask_tokens(codes, padding_mask, generator=torch.Generator().manual_seed(0), mask_id=CODEBOOK)
    masked = targets != IGNORE_INDEX
    assert masked.sum(dim=(1, 2)).tolist() == [100, 60, 100, 100]  # round(0.25 * valid tokens) per clip
    assert not masked[1, 30:].any()
    assert (inputs[masked] == CODEBOOK).all() and (targets[masked] == codes[masked]).all()
    assert (inputs[~masked] == codes[~masked]).all()


def runs_of_true(row: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    runs, n = [], 0
    for v in row.tolist() + [False]:
        if v:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def test_frame_masking_hides_every_level_of_a_quarter_of_the_valid_frames():
    codes = random_codes(3, 40, 4)
    padding_mask = torch.ones(3, 40, dtype=torch.bool)
    padding_mask[2, 20:] = False
    _, targets = mask_tokens(codes, padding_mask, 0.25, torch.Generator().manual_seed(0), mask_id=CODEBOOK, unit="frame")
    masked = targets != IGNORE_INDEX  # (B, T, n_q)
    assert (masked.all(dim=2) == masked.any(dim=2)).all()  # a frame is masked whole or not at all
    assert masked.any(dim=2).sum(dim=1).tolist() == [10, 10, 5]
    assert not masked[2, 20:].any()


@pytest.mark.parametrize("ratio,span", [(0.5, 30), (0.25, 10), (0.8, 7)])
def test_span_masking_hits_the_ratio_with_spans_of_the_configured_length_on_padded_batches(ratio, span):
    lengths = [750, 600, 333, 20]  # the last clip is shorter than a span of 30: masked whole
    B, T = len(lengths), max(lengths)
    padding_mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    codes = random_codes(B, T, 2)
    _, targets = mask_tokens(codes, padding_mask, ratio, torch.Generator().manual_seed(1), mask_id=CODEBOOK,
                             unit="span", span=span)
    frames = (targets != IGNORE_INDEX).any(dim=2)  # (B, T)
    for b, n in enumerate(lengths):
        assert not frames[b, n:].any()  # never padding
        if n < span:
            assert frames[b, :n].all()
            continue
        n_spans = max(1, min(round(ratio * n / span), n // span))
        assert int(frames[b].sum()) == n_spans * span  # spans never overlap, so the ratio is hit exactly
        assert abs(int(frames[b].sum()) / n - ratio) <= span / n
        assert all(run % span == 0 for run in runs_of_true(frames[b]))  # runs are whole spans (adjacent ones merge)


def test_spans_land_anywhere_in_a_clip_and_differ_between_the_clips_of_a_batch():
    codes = random_codes(4, 375, 2)
    draws = torch.stack([(mask_tokens(codes, None, 0.5, torch.Generator().manual_seed(seed), mask_id=CODEBOOK,
                                      unit="span", span=30)[1] != IGNORE_INDEX).any(dim=2) for seed in range(200)])
    share = draws.float().mean(dim=0)  # (B, T): how often each frame was masked
    assert (share > 0).all() and (share < 1).all()
    assert abs(share[:, 120:255].mean().item() - 0.5) < 0.05  # the middle of a clip: as often as the ratio says
    assert all(not torch.equal(draws[:, 0], draws[:, b]) for b in range(1, 4))


def test_span_masking_by_start_probability_covers_about_one_minus_one_minus_p_to_the_span():
    codes, p, span = random_codes(8, 2000, 2), 0.02, 20
    _, targets = mask_tokens(codes, None, 0.25, torch.Generator().manual_seed(0), mask_id=CODEBOOK, unit="span",
                             span=span, start_prob=p)
    covered = (targets != IGNORE_INDEX).any(dim=2).float().mean().item()
    assert abs(covered - (1 - (1 - p) ** span)) < 0.04  # 0.33 expected


@pytest.mark.parametrize("options", [{"unit": "token"}, {"unit": "frame"}, {"unit": "span", "span": 30},
                                     {"unit": "span", "span": 30, "start_prob": 0.02}])
def test_masks_are_built_without_reading_device_tensors_on_the_host(options):
    # A host read (.tolist(), .item(), .cpu(), bool()) would stall the GPU once a micro-batch. Meta tensors hold no
    # data, so any such read raises here.
    codes = torch.zeros(4, 200, 2, dtype=torch.long, device="meta")
    padding_mask = torch.ones(4, 200, dtype=torch.bool, device="meta")
    inputs, targets = mask_tokens(codes, padding_mask, 0.5, mask_id=CODEBOOK, **options)
    assert inputs.shape == targets.shape == codes.shape


def test_mask_tokens_with_the_same_seed_repeats_and_with_another_differs():
    codes = random_codes(2, 40, 4)

    def masked(seed: int) -> torch.Tensor:
        _, targets = mask_tokens(codes, None, 0.25, torch.Generator().manual_seed(seed), mask_id=CODEBOOK)
        return targets != IGNORE_INDEX

    assert torch.equal(masked(3), masked(3))
    assert not torch.equal(masked(3), masked(4))


def test_loss_counts_masked_positions_only():
    codes = random_codes(2, 10, 4)
    _, targets = mask_tokens(codes, None, generator=torch.Generator().manual_seed(0), mask_id=CODEBOOK)
    logits = torch.randn(2, 10, 4, CODEBOOK)
    loss, accuracy = mlm_loss(logits, targets)

    unmasked = (targets == IGNORE_INDEX).unsqueeze(-1)
    noisy = torch.where(unmasked, torch.randn_like(logits) * 100, logits)
    assert torch.equal(mlm_loss(noisy, targets)[0], loss)

    boosted = logits.clone()
    boosted.view(-1, CODEBOOK)[targets.view(-1) != IGNORE_INDEX] += 5.0 * torch.nn.functional.one_hot(
        targets.view(-1)[targets.view(-1) != IGNORE_INDEX], CODEBOOK)
    boosted_loss, boosted_accuracy = mlm_loss(boosted, targets)
    assert boosted_loss < loss and boosted_accuracy > accuracy


def masked_batch(config: ModelConfig, T: int = 7, seed: int = 1):
    """Two clips, the second one padded after 4 frames, 25% of their tokens masked."""
    codes = random_codes(2, T, config.n_q)
    padding_mask = torch.tensor([[True] * T, [True] * 4 + [False] * (T - 4)])
    inputs, targets = mask_tokens(codes, padding_mask, generator=torch.Generator().manual_seed(seed), mask_id=config.mask_id)
    return inputs, padding_mask, targets


@pytest.mark.parametrize("model_cls", [MegaAudioFormer, FlatTransformer])
def test_forward_with_targets_returns_the_accuracy_and_loss_of_the_masked_tokens_full_logits(model_cls):
    config = tiny(n_q=4)
    model = model_cls(config).eval()
    inputs, padding_mask, targets = masked_batch(config)
    with torch.no_grad():
        all_logits, no_loss = model(inputs, padding_mask)
        accuracy, loss = model(inputs, padding_mask, targets)
    assert no_loss is None and all_logits.shape == (2, 7, 4, CODEBOOK)
    reference_loss, reference_accuracy = mlm_loss(all_logits, targets)
    torch.testing.assert_close(loss, reference_loss, atol=1e-5, rtol=1e-5)
    assert accuracy.item() == reference_accuracy.item()


@pytest.mark.parametrize("model_cls", [MegaAudioFormer, FlatTransformer])
def test_chunked_masked_loss_has_the_loss_and_every_gradient_of_the_full_logits_loss(model_cls):
    config = tiny(n_q=4)
    model = model_cls(config).train()
    heads = model.local_encoder.heads if model_cls is MegaAudioFormer else model.heads
    heads.chunk_rows = 3  # several chunks per level, the last one short
    inputs, padding_mask, targets = masked_batch(config, T=20)
    per_level = (targets != IGNORE_INDEX).sum(dim=(0, 1))
    assert per_level.min() > heads.chunk_rows and (per_level % heads.chunk_rows).any()

    _, chunked_loss = model(inputs, padding_mask, targets)
    chunked_loss.backward()
    chunked_grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    full_loss = mlm_loss(model(inputs, padding_mask)[0], targets)[0]
    full_loss.backward()

    torch.testing.assert_close(chunked_loss, full_loss, atol=1e-6, rtol=1e-5)
    full_grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert chunked_grads.keys() == full_grads.keys() and len(full_grads) == len(list(model.parameters()))
    for name, grad in full_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, atol=1e-7, rtol=1e-4, msg=name)


def peak_live_bytes(fn) -> int:
    """Peak of live CPU tensor bytes while fn runs (torch.profiler's signed allocation events)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def test_masked_loss_never_holds_all_masked_logits_in_forward_or_backward():
    n_q, dim, vocab, frames = 4, 16, CODEBOOK, 500
    heads = LevelHeads(n_q, dim, vocab, chunk_rows=64)
    states = torch.randn(frames, n_q, dim, requires_grad=True)
    select = torch.rand(frames, n_q, generator=torch.Generator().manual_seed(0)) < 0.5
    labels = torch.randint(0, vocab, (int(select.sum()),))
    logits_bytes = len(labels) * vocab * 4  # the (n_masked, V) fp32 logits: ~4 MB

    def step():
        loss, _ = heads.loss(states, select, labels)
        loss.backward()

    peak = peak_live_bytes(step)
    assert heads.weight.grad is not None and states.grad is not None
    assert peak < logits_bytes / 2, f"peak {peak} bytes, all masked logits are {logits_bytes}"  # full: ~3x logits


def test_tiny_model_overfits_one_small_batch_to_near_zero_loss():
    config = model_config("tiny", n_q=2, codebook_size=64)
    model = MegaAudioFormer(config)
    codes = random_codes(2, 12, 2, codebook=64)
    inputs, targets = mask_tokens(codes, None, generator=torch.Generator().manual_seed(0), mask_id=config.mask_id)
    optimizer = model.configure_optimizers(weight_decay=0.0, lr=3e-3)
    first_loss = None
    for _ in range(300):
        _, loss = model(inputs, None, targets)
        first_loss = first_loss if first_loss is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        loss, accuracy = mlm_loss(model(inputs)[0], targets)
    assert first_loss > 3.0
    assert loss.item() < 0.05 and accuracy.item() == 1.0


def test_mel_loss_on_masked_frames_decreases_on_a_learnable_toy():
    config = model_config("tiny", n_q=2, codebook_size=16, global_block="branchformer", global_mixer="summary_mixing",
                          mel_bins=8)
    model = MegaAudioFormer(config)
    codes = random_codes(2, 60, 2, codebook=16)
    padding_mask = torch.arange(60)[None] < torch.tensor([[60], [45]])
    t = torch.arange(60, dtype=torch.float32)[None, :, None]
    features = torch.sin(0.2 * t + torch.arange(8) + torch.tensor([0.0, 1.5])[:, None, None]).half()  # smooth in time
    inputs, targets = mask_tokens(codes, padding_mask, 0.3, torch.Generator().manual_seed(0), mask_id=config.mask_id,
                                  unit="span", span=5)

    def mel() -> torch.Tensor:
        return model.masked_mel_loss(model.global_encoder(inputs, padding_mask), features, targets, padding_mask)

    with torch.no_grad():
        first_mel, (_, first_total) = mel().item(), model(inputs, padding_mask, targets, features, mel_weight=2.0)
        mlm_only = model(inputs, padding_mask, targets)[1]
    torch.testing.assert_close(first_total, mlm_only + 2.0 * first_mel)  # the loss adds weight x the mel MSE
    optimizer = model.configure_optimizers(weight_decay=0.0, lr=3e-3)
    for _ in range(80):
        _, loss = model(inputs, padding_mask, targets, features, mel_weight=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert mel().item() < 0.3 * first_mel
    with pytest.raises(ValueError, match="mel_bins"):
        MegaAudioFormer(tiny())(inputs[..., :4].repeat(1, 1, 2), None, targets.repeat(1, 1, 2), features)


def test_contrastive_loss_asks_each_half_to_find_its_partner_and_skips_clips_with_an_empty_half():
    B, T = 8, 10
    first = torch.randn(B, 16)
    partners = torch.cat([first, first + 0.01 * torch.randn(B, 16)])  # rows i and i + B: one clip's halves
    strangers = torch.cat([first, torch.randn(B, 16)])
    assert contrastive_loss(partners, None).item() < 0.05
    assert contrastive_loss(strangers, None).item() > 1.0
    # clip_halves puts a clip's first half at row i and its second half at row i + B
    codes = random_codes(B, 2 * T, 2)
    halves = clip_halves(codes)
    assert halves.shape == (2 * B, T, 2)
    assert torch.equal(halves[3], codes[3, :T]) and torch.equal(halves[B + 3], codes[3, T:])
    # a clip shorter than half the crop has an empty second half: it is neither anchor nor candidate
    valid = torch.ones(B, 2 * T, dtype=torch.bool)
    valid[5, T - 2:] = False
    halves_valid = clip_halves(valid)
    broken = strangers.clone()
    broken[B + 5] = first[0]  # whatever its empty half says, the loss does not change
    expected = contrastive_loss(torch.cat([strangers[:B][torch.arange(B) != 5], strangers[B:][torch.arange(B) != 5]]), None)
    torch.testing.assert_close(contrastive_loss(strangers, halves_valid), expected)
    torch.testing.assert_close(contrastive_loss(broken, halves_valid), expected)


def test_classifier_from_checkpoint_has_exactly_the_global_weights_and_no_local_encoder(tmp_path):
    pretrained = MegaAudioFormer(tiny(n_q=4))
    pretrained.save_pretrained(tmp_path / "ckpt")
    header = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert header["model_type"] == "mega_audio_former" and header["config"]["n_q"] == 4

    classifier = AudioClassifier.from_pretrained(tmp_path / "ckpt", n_classes=5)
    state = classifier.state_dict()
    global_state = {k: v for k, v in pretrained.state_dict().items() if k.startswith("global_encoder.")}
    assert not any(name.startswith("local_encoder") for name in state)
    assert not hasattr(classifier, "local_encoder")
    assert set(state) == set(global_state) | {"head.weight", "head.bias"}
    for name, weight in global_state.items():
        assert torch.equal(state[name], weight), name

    codes = random_codes(2, 6, 4)
    with torch.no_grad():
        expected = pretrained.global_encoder(codes).mean(dim=1)
        torch.testing.assert_close(classifier.embed(codes), expected)


def test_classifier_from_pretraining_checkpoint_needs_n_classes(tmp_path):
    MegaAudioFormer(tiny()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="n_classes"):
        AudioClassifier.from_pretrained(tmp_path)


@pytest.mark.parametrize("multi_label, hidden, pool",
                         [(False, None, "mean"), (True, 512, "stats"), (False, 0, "attention")])
def test_saved_models_reload_to_identical_outputs(tmp_path, multi_label, hidden, pool):
    codes = random_codes(2, 5, 4)
    models = [
        MegaAudioFormer(tiny(global_mixer="summary_mixing", global_block="branchformer")),
        FlatTransformer(tiny(global_mixer="summary_mixing")),
        AudioClassifier(tiny(), n_classes=4, multi_label=multi_label, hidden=hidden, probe_pool=pool),
    ]
    if pool == "attention":
        torch.nn.init.normal_(models[2].attention_pool.query)  # not the mean any more: the reloaded query must count
    for i, model in enumerate(models):
        model.eval().save_pretrained(tmp_path / str(i), metadata={"labels": ["a", "b", "c", "d"]})
        reloaded = type(model).from_pretrained(tmp_path / str(i)).eval()
        with torch.no_grad():
            assert torch.equal(reloaded(codes)[0], model(codes)[0])
        assert reloaded.metadata == {"labels": ["a", "b", "c", "d"]}
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["0", "1", "2"] + ["config.json", "model.safetensors",
                                                                                   "README.md"] * 3)
    classifier = AudioClassifier.from_pretrained(tmp_path / "2")
    assert (classifier.multi_label, classifier.hidden, classifier.n_classes, classifier.probe_pool) == \
        (multi_label, hidden, 4, pool)


def test_loading_a_checkpoint_as_the_wrong_model_names_what_it_holds(tmp_path):
    FlatTransformer(tiny()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="flat_transformer"):
        MegaAudioFormer.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        MegaAudioFormer.from_pretrained(tmp_path / "missing")


def test_multi_label_classifier_trains_with_binary_targets_and_single_label_with_class_ids():
    codes = random_codes(3, 6, 4)
    multi = AudioClassifier(tiny(), n_classes=5, multi_label=True)
    logits, loss = multi(codes, labels=torch.tensor([[1, 0, 1, 0, 0], [0] * 5, [1] * 5]))
    assert loss.ndim == 0 and torch.all((multi.probabilities(logits) > 0) & (multi.probabilities(logits) < 1))
    single = AudioClassifier(tiny(), n_classes=5)
    logits, loss = single(codes, labels=torch.tensor([0, 3, 4]))
    torch.testing.assert_close(single.probabilities(logits).sum(-1), torch.ones(3))


def test_frozen_classifier_trains_only_its_head():
    classifier = AudioClassifier(tiny(), n_classes=3, hidden=512)
    classifier.freeze_encoder()
    trainable = {name for name, p in classifier.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("head.") for name in trainable)


def test_optimizer_decays_matrices_but_not_norms_or_biases():
    model = MegaAudioFormer(tiny())
    decay, no_decay = model.configure_optimizers(weight_decay=0.1, lr=1e-3).param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_parameter_counts_split_global_and_local():
    model = MegaAudioFormer(tiny())
    counts = parameter_counts(model)
    assert counts["global"] == sum(p.numel() for p in model.global_encoder.parameters())
    assert counts["global"] + counts["local"] == counts["total"]


def test_config_round_trips_and_bad_configs_name_the_fix():
    config = tiny(global_mixer="summary_mixing")
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="preset"):
        model_config("huge", n_q=2, codebook_size=CODEBOOK)
    with pytest.raises(ValueError, match="d_globl"):
        model_config("tiny", n_q=2, codebook_size=CODEBOOK, d_globl=64)
    with pytest.raises(ValueError, match="global_mixer"):
        tiny(global_mixer="mamba")
    with pytest.raises(ValueError, match="global_block"):
        tiny(global_block="conformer")
    with pytest.raises(ValueError, match="head dim"):
        tiny(n_global_heads=3)
    with pytest.raises(ValueError, match="tokenize at the model's bitrate"):
        config.check_data(n_q=16, codebook_size=CODEBOOK)
    with pytest.raises(ValueError, match="n_q=4"):
        MegaAudioFormer(config)(random_codes(1, 3, 2))
