"""Synthetic "spoken digits": sine-wave formant glides, for the streaming Conformer's CTC recipe.

Each digit 0-9 is a glide between two of five vowel-like formant triples (``PHONES``): five
phone pairs, each in both orders (``DIGITS``; digit 0 glides from "a" to "i", digit 1 from "i"
to "a"), so a model must read both halves of a digit, in order. An utterance is 1 to
``max_digits`` digits with random durations and gaps of silence, spoken by a random "speaker"
(all formants scaled by one factor, over a range wider than the gaps between some phones'
formants), with per-digit formant jitter, random formant amplitudes and white noise at a random
SNR (down to -5 dB). Features are log
energies of a fixed triangular mel filterbank on ``torch.stft`` frames (32 ms hop at 8 kHz),
standardized by fixed constants, so every frame depends on its own samples only.

    batch = make_batch(32, torch.Generator().manual_seed(0))
    batch["features"]  # (B, T, N_MELS) float, zero-padded after batch["lengths"] (B,)
    batch["targets"]   # (B, S) digit labels 1..10 (0 = CTC blank), padded with 0
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch

from ..checks import check_int, check_number

SAMPLE_RATE = 8000
N_FFT, HOP = 512, 256  # 64 ms windows, 32 ms hop (a 4x-subsampled front end's frame rate)
N_MELS = 32
BLANK = 0  # CTC blank; digit d is token d + 1
PHONES = {"a": (730, 1090, 2440), "i": (270, 2290, 3010), "u": (300, 870, 2240),
          "e": (530, 1840, 2480), "o": (570, 840, 2410)}  # formant triples (Hz)
DIGITS = ("ai", "ia", "ue", "eu", "oi", "io", "au", "ua", "eo", "oe")  # digit d: start, end
JITTER = 0.06  # per-digit formant jitter (+-6%)
SPEAKERS = (0.8, 1.25)  # speaker factor range: wider than the gaps between some phones' formants
GAP = 0.08  # seconds of silence before each digit (and at the end): 0..GAP
DURATION = (0.12, 0.30)  # seconds per digit
SNR = (-5.0, 20.0)  # dB, per utterance
FEATURE_SHIFT, FEATURE_SCALE = -5.3, 2.0  # log-mel standardization (measured on seed 0)


def check_sizes(owner: str, max_digits: int, snr_low: float, snr_high: float) -> None:
    check_int(owner, "max_digits", max_digits, 1, 20)
    check_number(owner, "snr_low", snr_low, -20, 60)
    check_number(owner, "snr_high", snr_high, snr_low, 60, note=" (>= snr_low)")


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def digit_wave(digit: int, n: int, gen: torch.Generator, speaker: float) -> torch.Tensor:
    """``n`` samples of one digit: three sines gliding (in log frequency) from the start phone's
    formants to the end phone's, jittered by JITTER, with 10 ms ramps at both ends."""
    start, end = (torch.tensor(PHONES[p], dtype=torch.float64) for p in DIGITS[digit])
    jitter = 1 + JITTER * (2 * torch.rand(3, generator=gen, dtype=torch.float64) - 1)
    frac = torch.linspace(0, 1, n, dtype=torch.float64)[:, None]  # (n, 1)
    freq = speaker * jitter * torch.exp((1 - frac) * start.log() + frac * end.log())  # (n, 3)
    phase = 2 * math.pi * torch.cumsum(freq, 0) / SAMPLE_RATE \
        + 2 * math.pi * torch.rand(3, generator=gen, dtype=torch.float64)  # (n, 3)
    amps = torch.tensor([1.0, 0.6, 0.35], dtype=torch.float64) \
        * (0.7 + 0.6 * torch.rand(3, generator=gen, dtype=torch.float64))
    wave = (phase.sin() * amps).sum(1)  # (n,)
    ramp = min(n // 2, SAMPLE_RATE // 100)
    envelope = torch.ones(n, dtype=torch.float64)
    envelope[:ramp] = torch.linspace(0, 1, ramp, dtype=torch.float64)
    envelope[n - ramp:] = torch.linspace(1, 0, ramp, dtype=torch.float64)
    return wave * envelope


def silence(gen: torch.Generator) -> torch.Tensor:
    return torch.zeros(int(_uniform(gen, 0.0, GAP) * SAMPLE_RATE), dtype=torch.float64)


def utterance(gen: torch.Generator, max_digits: int = 5, snr_low: float = SNR[0],
              snr_high: float = SNR[1]) -> Tuple[torch.Tensor, List[int]]:
    """A waveform ``(n,)`` and its digits: 1..max_digits digits lasting DURATION, each after
    0..GAP s of silence (and 0..GAP at the end), one speaker factor in SPEAKERS, white noise at
    an SNR in [snr_low, snr_high] dB."""
    count = int(torch.randint(1, max_digits + 1, (), generator=gen))
    digits = torch.randint(0, 10, (count,), generator=gen).tolist()
    speaker = _uniform(gen, *SPEAKERS)
    pieces = []
    for d in digits:
        pieces.append(silence(gen))
        pieces.append(digit_wave(d, int(_uniform(gen, *DURATION) * SAMPLE_RATE), gen, speaker))
    pieces.append(silence(gen))
    wave = torch.cat(pieces)
    snr = _uniform(gen, snr_low, snr_high)
    power = wave.pow(2).mean() * 10 ** (-snr / 10)  # noise power for that SNR
    noise = torch.randn(wave.shape, generator=gen, dtype=torch.float64) * power.sqrt()
    return (wave + noise).float(), digits


def mel_filterbank(n_mels: int = N_MELS) -> torch.Tensor:
    """Triangular filters on the mel scale over 0..SAMPLE_RATE/2: ``(N_FFT // 2 + 1, n_mels)``."""
    def mel(hz):
        return 2595 * torch.log10(1 + hz / 700)
    bins = torch.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1)  # (n_freq,)
    edges = torch.linspace(0, float(mel(torch.tensor(SAMPLE_RATE / 2.0))), n_mels + 2)
    edges = 700 * (10 ** (edges / 2595) - 1)  # (n_mels + 2,) Hz
    low, mid, high = edges[:-2], edges[1:-1], edges[2:]
    rise = (bins[:, None] - low) / (mid - low)
    fall = (high - bins[:, None]) / (high - mid)
    return torch.clamp(torch.minimum(rise, fall), min=0)  # (n_freq, n_mels)


_FILTERBANK = mel_filterbank()


def features(wave: torch.Tensor) -> torch.Tensor:
    """Standardized log-mel energies ``(T, N_MELS)`` of a waveform ``(n,)``, one frame per HOP
    samples (frame t reads samples ``t*HOP .. t*HOP + N_FFT - 1``)."""
    wave = torch.nn.functional.pad(wave, (0, max(0, N_FFT - wave.shape[0])))
    spec = torch.stft(wave, N_FFT, HOP, window=torch.hann_window(N_FFT), center=False,
                      return_complex=True)  # (n_freq, T)
    energy = spec.abs().pow(2).T @ _FILTERBANK  # (T, n_mels)
    return (torch.log(energy + 1e-4) + FEATURE_SHIFT) / FEATURE_SCALE


def make_batch(n: int, gen: torch.Generator, max_digits: int = 5, snr_low: float = SNR[0],
               snr_high: float = SNR[1]) -> Dict[str, torch.Tensor]:
    """``n`` utterances: ``features (n, T, N_MELS)`` zero-padded, ``lengths (n,)``, ``targets
    (n, S)`` (digit + 1, padded with BLANK), ``target_lengths (n,)``."""
    check_int("make_batch", "n", n, 1)
    check_sizes("make_batch", max_digits, snr_low, snr_high)
    feats, labels = [], []
    for _ in range(n):
        wave, digits = utterance(gen, max_digits, snr_low, snr_high)
        feats.append(features(wave))
        labels.append(torch.tensor(digits) + 1)
    return {"features": torch.nn.utils.rnn.pad_sequence(feats, batch_first=True),
            "lengths": torch.tensor([f.shape[0] for f in feats]),
            "targets": torch.nn.utils.rnn.pad_sequence(labels, batch_first=True,
                                                       padding_value=BLANK),
            "target_lengths": torch.tensor([len(d) for d in labels])}
