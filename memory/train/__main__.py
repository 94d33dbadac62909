"""`python -m memory.train --data DIR --out DIR`: train (or resume) the embedded world model (data-parallel under torchrun)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .loop import TrainConfig, train
from .loss import ADVERSARIAL_WEIGHT, GRADIENT_WEIGHT, STATISTICS_WEIGHT
from .recolour import RECOLOUR
from .stream import MAX_FORCED_CHUNKS


def main() -> None:
    """Parse the command line and train."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True, help="folder of come-episode/1 files (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="run folder: checkpoint/, loss.jsonl (resumes if present)")
    for name, default in [("steps", 20000), ("minutes", 360.0), ("batch-size", 8), ("lr", 3e-4), ("seed", 0),
                          ("save-every", 100), ("threads", 1), ("workers", 1)]:
        parser.add_argument(f"--{name}", type=type(default), default=default)
    parser.add_argument("--init", type=Path, default=None,
                        help="model folder to start a new run from (default: random weights); ignored when resuming")
    parser.add_argument("--no-self-forcing", action="store_true",
                        help="train on true frames only (no windows conditioned on the model's own rollout)")
    parser.add_argument("--shards", type=int, default=None,
                        help="draw the global batch (--batch-size) as this many seeded shards, a multiple of the "
                             "processes (default: one per process); 1 process with --shards N repeats an N-process run")
    parser.add_argument("--generated-confidence", type=float, default=None,
                        help="coverage value of mosaic pixels warped from generated frames (saved in the model's "
                             "config; default: keep the model's, 1 for a new one)")
    parser.add_argument("--variance-head", action="store_true",
                        help="train only a variance head (added if --init has none) on the frozen network, by "
                             "Gaussian likelihood: the clean estimates stay exactly as they are")
    parser.add_argument("--forced-chunks", type=int, default=MAX_FORCED_CHUNKS,
                        help=f"deepest self-forced rollout in chunks of 4 frames (default {MAX_FORCED_CHUNKS})")
    parser.add_argument("--recolour", type=float, default=RECOLOUR,
                        help=f"share of the drawn episodes whose frames are all recoloured alike (default {RECOLOUR})")
    parser.add_argument("--gradient-weight", type=float, default=GRADIENT_WEIGHT,
                        help=f"weight of the colours' gradient difference in the loss (default {GRADIENT_WEIGHT})")
    parser.add_argument("--statistics-weight", type=float, default=STATISTICS_WEIGHT,
                        help="weight of the difference of each frame's colour and texture statistics in the loss "
                             f"(default {STATISTICS_WEIGHT})")
    parser.add_argument("--adversarial-weight", type=float, default=ADVERSARIAL_WEIGHT,
                        help="weight of a scene critic's hinge term in the loss: predicted frames must look like frames "
                             f"of the scene their context shows (default {ADVERSARIAL_WEIGHT})")
    parser.add_argument("--refiner-channels", type=int, default=None,
                        help="add a zero-initialised convolutional refiner of this many channels to an --init model "
                             "without one (default: keep the model's)")
    parser.add_argument("--ema-decay", type=float, default=0.0,
                        help="keep a moving average of the weights with this decay beside each checkpoint, in "
                             "checkpoint/ema (0.999: about the last 1000 steps; default 0, none)")
    args = parser.parse_args()
    train(TrainConfig(data=args.data, out=args.out, steps=args.steps, minutes=args.minutes,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed, save_every=args.save_every,
                      threads=args.threads, workers=args.workers,
                      init=args.init, self_forcing=not args.no_self_forcing, shards=args.shards,
                      generated_confidence=args.generated_confidence, variance_head=args.variance_head,
                      forced_chunks=args.forced_chunks, recolour=args.recolour,
                      gradient_weight=args.gradient_weight, statistics_weight=args.statistics_weight,
                      adversarial_weight=args.adversarial_weight, refiner_channels=args.refiner_channels,
                      ema_decay=args.ema_decay))


if __name__ == "__main__":
    main()
