"""Codecs: token shapes, determinism, weight routes (HF dir / Meta .th), streaming and bounded memory."""

import hashlib
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mega_audio.codecs import BITRATE_TO_NQ, load_codec
from mega_audio.codecs.base import CodecWeightsError
from mega_audio.codecs.encodec import EncodecCodec, seed_codebooks

SR = 24_000
REPO = Path(__file__).resolve().parents[1]


def music(seconds: float, seed: int = 0) -> np.ndarray:
    """Varied "music": a new harmonic note every 0.25 s, a noisy drum hit every 0.5 s, a short gap every 3 s."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    pitch = 110 * 2 ** (rng.integers(0, 24, size=int(seconds * 4) + 1)[(t * 4).astype(int)] / 12)
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    notes = sum(np.sin(k * phase) / k for k in range(1, 5))
    drums = rng.standard_normal(len(t)) * np.exp(-30 * (t % 0.5))
    gaps = (t % 3.0) < 2.7
    return (0.2 * notes * gaps + 0.1 * drums).astype(np.float32)


def write_and_read(path: Path, wave: np.ndarray) -> np.ndarray:
    sf.write(path, wave, SR, subtype="PCM_16")
    audio, sr = sf.read(path, dtype="float32")
    assert sr == SR
    return audio


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[np.ndarray]:
    root = tmp_path_factory.mktemp("audio")
    return [write_and_read(root / f"clip{i}.wav", music(s, seed=i)) for i, s in enumerate([3.0, 2.51, 1.337, 4.2])]


def hf_to_meta_state(model) -> dict[str, torch.Tensor]:
    """The reverse of the documented Meta -> HF renaming (docs/architecture.md), to write a Meta-format checkpoint."""
    from transformers.models.encodec.modeling_encodec import EncodecConvTranspose1d

    transposed = {name for name, m in model.named_modules() if isinstance(m, EncodecConvTranspose1d)}
    state = {}
    for key, value in model.state_dict().items():
        owner = key.split(".conv.")[0]
        meta = key.replace(".parametrizations.weight.original0", ".weight_g")
        meta = meta.replace(".parametrizations.weight.original1", ".weight_v")
        if ".conv." in meta:
            meta = meta.replace(".conv.", ".convtr.convtr." if owner in transposed else ".conv.conv.", 1)
        meta = meta.replace("encoder.layers.", "encoder.model.").replace("decoder.layers.", "decoder.model.")
        meta = meta.replace("quantizer.layers.", "quantizer.vq.layers.").replace(".codebook.", "._codebook.")
        state[meta] = value.clone()
    return state


@pytest.fixture(scope="module")
def encodec_weights(tmp_path_factory, clips) -> dict[str, Path]:
    """One random 24 kHz Encodec with data-filled codebooks, saved as an HF dir and as Meta's .th."""
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig()).eval()
    seed_codebooks(model, clips)
    root = tmp_path_factory.mktemp("encodec")
    model.save_pretrained(root / "hf")
    torch.save(hf_to_meta_state(model), root / "encodec_24khz-test.th")
    return {"hf": root / "hf", "th": root / "encodec_24khz-test.th"}


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


# ---------------------------------------------------------------- bestrq

@pytest.mark.parametrize("bitrate", [1.5, 12.0])
def test_bestrq_tokens_are_int16_with_ceil_duration_times_75_frames(bitrate, clips):
    codec = load_codec("bestrq", bitrate, device="cpu")
    waves = clips + [clips[0][:1], clips[1][:320], clips[1][:321], np.zeros(0, np.float32)]
    for wave, codes in zip(waves, codec.encode(waves)):
        assert codes.dtype == np.int16
        assert codes.shape == (math.ceil(len(wave) / SR * 75), BITRATE_TO_NQ[bitrate])
        assert codes.size == 0 or 0 <= codes.min() <= codes.max() < 1024


def test_bestrq_is_deterministic_across_separately_built_codecs_and_processes(clips, tmp_path):
    first = load_codec("bestrq", 12.0, device="cpu")
    second = load_codec("bestrq", 12.0, device="cpu")
    codes = first.encode(clips)
    assert all(np.array_equal(a, b) for a, b in zip(codes, second.encode(clips)))
    assert first.fingerprint == second.fingerprint
    script = textwrap.dedent("""
        import sys, numpy as np, soundfile as sf
        from mega_audio.codecs import load_codec
        codec = load_codec("bestrq", 12.0, device="cpu")
        wave, _ = sf.read(sys.argv[1], dtype="float32")
        np.save(sys.argv[2], codec.encode([wave])[0])
        print(codec.fingerprint)
    """)
    sf.write(tmp_path / "a.wav", clips[0], SR, subtype="FLOAT")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "a.wav"), str(tmp_path / "codes.npy")],
                         cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == first.fingerprint
    assert np.array_equal(np.load(tmp_path / "codes.npy"), codes[0])


def test_bestrq_uses_many_distinct_codes_on_varied_audio(clips):
    codes = np.concatenate(load_codec("bestrq", 1.5, device="cpu").encode(clips))  # (T, 2)
    for level in range(codes.shape[1]):
        # the clips hold ~44 distinct notes plus drum hits over ~830 frames; a steady note keeps its code
        assert len(np.unique(codes[:, level])) > 40


def test_bestrq_keeps_steady_timbre_apart_whatever_the_loudness():
    """Per-clip normalisation must not erase a clip's spectral envelope: a dark and a bright tone stay apart."""
    codec = load_codec("bestrq", 1.5, device="cpu")
    t = np.arange(2 * SR) / SR
    rng = np.random.default_rng(0)

    def note(n_harmonics: int, gain: float) -> np.ndarray:
        wave = sum(np.sin(2 * np.pi * 220 * k * t) / k for k in range(1, n_harmonics + 1))
        return (gain * (wave / np.abs(wave).max() + 1e-3 * rng.standard_normal(len(t)))).astype(np.float32)

    def histogram(wave: np.ndarray) -> np.ndarray:
        return np.bincount(codec.encode([wave])[0][:, 0], minlength=1024) / codec.n_frames(len(wave))

    dark = [histogram(note(2, g)) for g in (0.1, 0.8)]
    bright = [histogram(note(20, g)) for g in (0.1, 0.8)]
    within = np.abs(dark[0] - dark[1]).sum() + np.abs(bright[0] - bright[1]).sum()
    between = np.abs(dark[0] - bright[0]).sum() + np.abs(dark[1] - bright[1]).sum()
    assert between > 3 * within


def test_bestrq_seed_changes_fingerprint_and_codes(clips):
    from mega_audio.codecs.bestrq import BestRQCodec

    a, b = BestRQCodec(1.5, seed=0), BestRQCodec(1.5, seed=1)
    assert a.fingerprint != b.fingerprint
    assert agreement(a.encode(clips[:1])[0], b.encode(clips[:1])[0]) < 0.1


def test_bestrq_fingerprint_is_bitrate_independent_and_low_bitrate_codes_are_a_prefix(clips):
    low, high = load_codec("bestrq", 1.5, device="cpu"), load_codec("bestrq", 12.0, device="cpu")
    assert low.fingerprint == high.fingerprint
    assert np.array_equal(low.encode(clips[:1])[0], high.encode(clips[:1])[0][:, :2])


def test_bestrq_8192_codes_and_per_feature_normalisation_give_valid_codes_and_their_own_fingerprints(clips):
    from mega_audio.codecs.bestrq import LATER_DEFAULTS, BestRQCodec

    codecs = {(size, norm): load_codec("bestrq", 12.0, device="cpu", codebook_size=size, normalize=norm)
              for size in (1024, 8192) for norm in ("clip", "feature")}
    codes = {key: np.concatenate(codec.encode(clips)) for key, codec in codecs.items()}
    for (size, norm), c in codes.items():
        assert c.dtype == np.int16 and c.shape[1] == 16 and c.min() >= 0 and c.max() < size
        assert codecs[size, norm].card()["codebook_size"] == size and codecs[size, norm].card()["normalize"] == norm
    assert (codes[8192, "clip"] >= 1024).mean() > 0.5  # the codes beyond the first 1024 are used
    assert agreement(codes[1024, "clip"], codes[1024, "feature"]) < 0.5  # another input, other codes
    assert len({codec.fingerprint for codec in codecs.values()}) == 4  # stores of different options never mix
    # the default keeps the fingerprint of the recipe before these options existed: old stores still mix with new
    default = codecs[1024, "clip"]
    before = {k: v for k, v in default.params().items() if k not in LATER_DEFAULTS}
    assert default.fingerprint == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    with pytest.raises(ValueError, match="8192"):
        BestRQCodec(1.5, codebook_size=4096)
    with pytest.raises(ValueError, match="--codec bestrq"):
        load_codec("encodec", 1.5, codebook_size=8192)


def test_codec_card_carries_what_a_token_store_needs():
    card = load_codec("bestrq", 3.0, device="cpu").card()
    expected = {"name": "bestrq", "sample_rate": 24000, "frame_rate": 75.0, "n_q": 4, "codebook_size": 1024,
                "bandwidth": 3.0}
    assert {k: card[k] for k in expected} == expected
    assert len(card["fingerprint"]) == 64 and json.dumps(card)


def test_unknown_codec_or_bitrate_is_rejected():
    with pytest.raises(ValueError, match="bitrate"):
        load_codec("bestrq", 7.0)
    with pytest.raises(ValueError, match="encodec"):
        load_codec("soundstream", 1.5)


# ---------------------------------------------------------------- encodec

def test_encodec_hf_dir_and_meta_th_give_identical_nondegenerate_codes(encodec_weights, clips):
    from_hf = load_codec("encodec", 12.0, weights=str(encodec_weights["hf"]), device="cpu")
    from_th = load_codec("encodec", 12.0, weights=str(encodec_weights["th"]), device="cpu")
    hf_codes, th_codes = from_hf.encode(clips), from_th.encode(clips)
    for wave, a, b in zip(clips, hf_codes, th_codes):
        assert a.dtype == np.int16 and a.shape == (math.ceil(len(wave) / 320), 16)
        assert np.array_equal(a, b)
    every = np.concatenate(hf_codes)  # (T, 16)
    assert all(len(np.unique(every[:, q])) > 50 for q in range(16))  # of 1024, over ~830 frames


def test_encodec_fingerprint_is_the_same_for_both_routes_and_every_bitrate(encodec_weights):
    from_hf = load_codec("encodec", 1.5, weights=str(encodec_weights["hf"]), device="cpu")
    from_th = load_codec("encodec", 24.0, weights=str(encodec_weights["th"]), device="cpu")
    assert from_hf.fingerprint == from_th.fingerprint and len(from_hf.fingerprint) == 64
    assert from_hf.card()["n_q"] == 2 and from_th.card()["n_q"] == 32


def test_encodec_streamed_encoding_equals_transformers_encode_on_single_clips(encodec_weights):
    """Tiles of 0.5 s and LSTM segments of 40 frames (forced small here) change no code."""
    from transformers import EncodecModel

    reference = EncodecModel.from_pretrained(encodec_weights["hf"]).eval()
    codec = EncodecCodec(EncodecModel.from_pretrained(encodec_weights["hf"]), 6.0, tile_seconds=0.5, lstm_frames=40)
    for wave in [music(3.3, seed=7), music(0.2, seed=8)]:
        with torch.no_grad():
            expected = reference.encode(torch.from_numpy(wave)[None, None], bandwidth=6.0).audio_codes[0, 0].T
        assert agreement(codec.encode([wave])[0], expected.numpy().astype(np.int16)) >= 0.995


def test_encodec_batched_encoding_agrees_with_one_clip_at_a_time(encodec_weights, clips):
    codec = load_codec("encodec", 12.0, weights=str(encodec_weights["hf"]), device="cpu")
    batched = codec.encode(clips)
    single = [codec.encode([wave])[0] for wave in clips]
    # Not bit-identical (docs/architecture.md): batch-4 kernels sum in another order, a short clip's last frame sees
    # zeros instead of reflect padding, and in this random model's RVQ a flipped code changes every
    # later level's residual, so deep levels agree less than the first.
    first_level = [agreement(a[:, 0], b[:, 0]) for a, b in zip(batched, single)]
    every_level = [agreement(a, b) for a, b in zip(batched, single)]
    assert min(first_level) >= 0.98 and min(every_level) >= 0.9, (first_level, every_level)


def test_encodec_long_clip_encoded_in_chunks_has_ceil_len_over_320_frames(encodec_weights):
    codec = load_codec("encodec", 1.5, weights=str(encodec_weights["th"]), device="cpu")
    codec.lstm_frames, codec.max_batch_samples = 150, 8 * SR  # 2 s LSTM segments; the long clip goes alone
    waves = [music(9.01, seed=3), music(1.0, seed=4)]
    chunked = codec.encode(waves)
    assert [c.shape for c in chunked] == [(math.ceil(len(w) / 320), 2) for w in waves]
    codec.lstm_frames = 10_000
    assert agreement(chunked[0], codec.encode(waves[:1])[0]) >= 0.995


def test_missing_encodec_weights_raise_an_error_naming_the_alternatives(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never wait on the network
    (tmp_path / "empty_dir").mkdir()
    for weights in [str(tmp_path / "nope.th"), str(tmp_path / "empty_dir"), "facebook/encodec_not_in_cache"]:
        with pytest.raises(CodecWeightsError) as err:
            load_codec("encodec", 1.5, weights=weights, device="cpu")
        message = str(err.value)
        assert ".th" in message and "config.json" in message and "--codec bestrq" in message


def test_a_file_that_is_not_an_encodec_checkpoint_is_refused_by_name(tmp_path):
    torch.save({"some.weight": torch.zeros(3)}, tmp_path / "other.th")
    with pytest.raises(CodecWeightsError, match="not an encodec_24khz checkpoint"):
        load_codec("encodec", 1.5, weights=str(tmp_path / "other.th"), device="cpu")


# ---------------------------------------------------------------- bounded memory

RSS_SCRIPT = """
import resource, sys, soundfile as sf
from mega_audio.codecs import load_codec
codec = load_codec(sys.argv[1], 1.5, weights=sys.argv[3] or None, device="cpu")
wave, _ = sf.read(sys.argv[2], dtype="float32")
codes = codec.encode([wave])[0]
assert codes.shape == (-(-len(wave) // 320), 2), codes.shape
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


@pytest.fixture(scope="module")
def ten_minute_song(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("long") / "song.wav"
    minute = music(60.0, seed=11)
    sf.write(path, np.tile(minute, 10) * np.linspace(0.5, 1.0, 10 * len(minute), dtype=np.float32), SR,
             subtype="PCM_16")
    return path


def peak_rss_bytes(codec: str, song: Path, weights: str = "") -> int:
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, codec, str(song), weights], cwd=REPO,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


def test_ten_minute_song_tokenizes_with_bestrq_under_3gb_peak_rss(ten_minute_song):
    assert peak_rss_bytes("bestrq", ten_minute_song) < 3 * 2**30


@pytest.mark.slow
def test_ten_minute_song_tokenizes_with_encodec_under_3gb_peak_rss(ten_minute_song, encodec_weights):
    assert peak_rss_bytes("encodec", ten_minute_song, str(encodec_weights["hf"])) < 3 * 2**30


def test_hub_id_loads_from_the_hf_cache_offline_and_the_demo_then_picks_encodec(encodec_weights, tmp_path):
    import shutil
    import subprocess
    import sys

    cache = tmp_path / "hub"
    snapshot = cache / "models--facebook--encodec_24khz" / "snapshots" / "0123abc"
    shutil.copytree(encodec_weights["hf"], snapshot)
    (cache / "models--facebook--encodec_24khz" / "refs").mkdir()
    (cache / "models--facebook--encodec_24khz" / "refs" / "main").write_text("0123abc")
    script = ("from mega_audio.codecs import default_codec, load_codec; "
              "print(default_codec(), load_codec('encodec', 1.5, device='cpu').fingerprint)")

    def run(hub_cache: Path) -> list[str]:
        env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
        return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True).stdout.split()

    picked, fingerprint = run(cache)
    assert picked == "encodec"
    assert fingerprint == load_codec("encodec", 1.5, weights=str(encodec_weights["hf"]), device="cpu").fingerprint
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    empty = subprocess.run([sys.executable, "-c", "from mega_audio.codecs import default_codec; print(default_codec())"],
                           env=env, capture_output=True, text=True)
    assert empty.stdout.strip() == "bestrq"
