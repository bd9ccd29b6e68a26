"""``sb-mamba stream MODEL``: separate a live mixture from stdin to stdout.

Reads raw 16-bit little-endian mono PCM at the model's rate from stdin and
writes the speakers as interleaved 16-bit little-endian channels to stdout
(channel ``i`` is speaker ``i``), chunk by chunk, through a causal SepMamba
(:class:`~sb_mamba.inference.streaming.StreamingSeparator`)::

    arecord -q -f S16_LE -r 8000 -c 1 | sb-mamba stream MODEL | aplay -f S16_LE -r 8000 -c 2
    sox in.wav -t raw -r 8000 -e signed -b 16 -c 1 - | sb-mamba stream MODEL \\
        | sox -t raw -r 8000 -e signed -b 16 -c 2 - out.wav   # channel 1, 2: the speakers
    rec -q -t raw -r 8000 -e signed -b 16 -c 1 - | sb-mamba stream MODEL \\
        | play -q -t raw -r 8000 -e signed -b 16 -c 2 -

At the end of the input the stream is flushed: the output has exactly as
many frames as the input had samples, equal (to float rounding and the
16-bit rounding) to the offline model's output on the whole input.

Errors follow :mod:`sb_mamba.cli`'s policy: one line, exit status 2 for a
non-causal model, a ``--rate`` other than the model's, a terminal on stdin,
an odd number of bytes at the end of the input (everything before it is
written first) or a closed output pipe.

Authors
-------
 * sb_mamba developers
"""

import os
import sys

import numpy as np
from speechbrain.utils.logger import get_logger

from sb_mamba.errors import UserError
from sb_mamba.inference.run_options import add_run_options, load_model

logger = get_logger(__name__)

READ_BYTES = 1 << 16  # largest single read from stdin


def add_arguments(p):
    """The arguments of ``sb-mamba stream``."""
    p.add_argument(
        "model",
        help="a causal model: a folder (sb-mamba export), a hub id or a shipped name (sepmamba-causal-8k)",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=None,
        metavar="SAMPLES",
        help="samples per chunk (default: one bottleneck frame, stride ** "
        "levels: 64 = 8 ms at 8 kHz for stride 4); smaller: less latency, "
        "more compute per sample",
    )
    p.add_argument(
        "--chunk-ms",
        type=float,
        default=None,
        metavar="MS",
        help="chunk length in milliseconds instead of --chunk",
    )
    p.add_argument(
        "--rate",
        type=int,
        default=None,
        help="rate of the input in Hz, checked against the model's (raw PCM carries none)",
    )
    p.add_argument(
        "--gain",
        type=float,
        default=1.0,
        help="factor applied to the outputs before the 16-bit rounding "
        "(default 1; they are clipped to full scale)",
    )
    add_run_options(p)
    p.add_argument("--savedir", default=None, help="where a hub model is stored")
    p.add_argument("-v", "--verbose", action="store_true", help="log the set-up")


def _to_pcm(est, gain):
    """[n, S] float -> interleaved 16-bit little-endian bytes; also the clipped count."""
    y = est.numpy() * (gain * 32767.0)
    clipped = int(np.count_nonzero(np.abs(y) > 32767.0))
    return np.clip(np.rint(y), -32768, 32767).astype("<i2").tobytes(), clipped


def _read_chunk(fd, nbytes, pending):
    """Read until ``nbytes`` bytes are there or the input ends -> (data, ended)."""
    parts, have = [pending], len(pending)
    while have < nbytes:
        data = os.read(fd, min(READ_BYTES, nbytes - have))
        if not data:
            return b"".join(parts), True
        parts.append(data)
        have += len(data)
    return b"".join(parts), False


def run(args):
    """``sb-mamba stream``: returns the exit status."""
    return _stream(args, sys.stdin.buffer.fileno(), sys.stdout.buffer)


def _stream(args, fd_in, out):
    import torch

    model = load_model(args)
    stream = model.stream()
    if os.isatty(fd_in):
        raise UserError(
            "stdin is a terminal: pipe raw 16-bit PCM into it, e.g. `arecord -f "
            "S16_LE -r 8000 -c 1 | sb-mamba stream MODEL | aplay -f S16_LE -r "
            "8000 -c 2`."
        )
    if args.rate is not None and args.rate != model.sample_rate:
        raise UserError(
            f"The input is at {args.rate} Hz but the model runs at "
            f"{model.sample_rate} Hz: resample it first (e.g. `sox ... -r "
            f"{model.sample_rate}` or `arecord -r {model.sample_rate}`)."
        )
    chunk = args.chunk or stream.frame
    if args.chunk_ms is not None:
        chunk = max(1, round(args.chunk_ms * model.sample_rate / 1000))
    if chunk < 1:
        raise UserError(f"--chunk must be at least 1 sample, got {chunk}.")
    logger.info(
        "Streaming %d speakers at %d Hz: chunks of %d samples, algorithmic latency "
        "%.1f ms (look-ahead %d samples).",
        stream.num_spks,
        model.sample_rate,
        chunk,
        stream.latency_ms(chunk),
        stream.lookahead,
    )
    clipped, pending, ended = 0, b"", False
    try:
        while not ended:
            data, ended = _read_chunk(fd_in, 2 * chunk, pending)
            whole = len(data) - len(data) % 2
            pending = data[whole:]
            pcm = np.frombuffer(data[:whole], dtype="<i2").astype(np.float32) / 32768.0
            est = stream.feed(torch.from_numpy(pcm)) if len(pcm) else None
            if ended:
                rest = stream.flush()
                est = rest if est is None else torch.cat([est, rest])
            if est is not None and len(est):
                buf, n = _to_pcm(est, args.gain)
                clipped += n
                out.write(buf)
                out.flush()
    except BrokenPipeError:
        # stdout is gone: send later writes (Python's own at exit) nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        raise UserError(
            "The output pipe was closed (broken pipe): the program reading "
            "sb-mamba stream's stdout stopped."
        ) from None
    if clipped:
        logger.warning("%d output samples were clipped to full scale: lower --gain.", clipped)
    if pending:
        raise UserError(
            "The input ended with an odd number of bytes: it must be 16-bit "
            "samples (raw S16_LE, e.g. `sox ... -t raw -e signed -b 16 -c 1 -`); "
            "everything before the last byte was separated and written."
        )
    return 0
