"""Command line: ``storm pretrain CONFIG.yaml``, ``storm features COHORT.csv --out DIR`` (also ``python -m storm``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from storm._version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="storm", description="STORM: spatial transcriptomics + H&E foundation model.")
    parser.add_argument("--version", action="version", version=f"storm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser(
        "pretrain",
        help="pretrain a model from a YAML configuration",
        description=(
            "Pretrain STORM (masked multimodal spatial modelling) as configured in CONFIG (see "
            "storm/train/configs/). Writes OUTPUT/model (the final model: model.safetensors + config.json), "
            "OUTPUT/checkpoints (Lightning checkpoints; last.ckpt resumes) and OUTPUT/logs/metrics.csv."
        ),
    )
    p.add_argument("config", help="YAML configuration file")
    p.add_argument("--output", help="run folder (overrides `output`)")
    p.add_argument("--max-steps", type=int, help="optimiser steps (overrides trainer.max_steps)")
    p.add_argument("--max-epochs", type=int, help="epochs (overrides trainer.max_epochs)")
    p.add_argument("--accelerator", help="cpu, gpu, cuda or auto (overrides trainer.accelerator)")
    p.add_argument("--devices", help="devices per node: a number, or auto (overrides trainer.devices)")
    p.add_argument("--strategy", help="auto or ddp (overrides trainer.strategy)")
    p.add_argument("--precision", help="e.g. 32-true, bf16-mixed (overrides trainer.precision)")
    p.add_argument("--batch-size", type=int, help="windows per batch and device (overrides trainer.batch_size)")
    p.add_argument("--num-workers", type=int, help="data-loader workers (overrides trainer.num_workers)")
    p.add_argument("--seed", type=int, help="seed (overrides trainer.seed)")
    p.add_argument("--resume-from", help="checkpoint to resume from, or 'last' (overrides trainer.resume_from)")
    p.add_argument("--no-pretraining", action="store_true", help="save the initialised model without training")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    f = commands.add_parser(
        "features",
        help="tile, embed and predict every slide of a cohort (one feature file per slide)",
        description=(
            "Tile the tissue of every slide of COHORT (a CSV with columns slide_id, path and optionally "
            "microns_per_pixel), embed the tiles and predict their expression with HEAD; write OUT/<slide_id>.h5ad "
            "per slide (storm.tl.cohort_features). Slides already written are skipped: a killed run resumes. "
            "Several GPUs or nodes: --accelerator gpu --devices N --strategy ddp [--num-nodes M]."
        ),
    )
    f.add_argument("cohort", help="cohort CSV: slide_id, path[, microns_per_pixel]")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument("--head", required=True, help="folder of a saved expression head (ExpressionHead.save)")
    f.add_argument("--model", help="folder of a saved model, or a model name (default: the embedded storm-mini)")
    f.add_argument("--tile-um", type=float, default=55.0, help="tile side in µm (default 55)")
    f.add_argument("--min-tissue-fraction", type=float, default=0.5, help="keep tiles this much tissue (default 0.5)")
    f.add_argument("--batch-size", type=int, default=256, help="tiles per forward pass (default 256)")
    f.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (Lightning)")
    f.add_argument("--devices", default="auto", help="devices per node: a number, or auto (Lightning)")
    f.add_argument("--strategy", default="auto", help="auto or ddp (Lightning)")
    f.add_argument("--num-nodes", type=int, default=1, help="nodes (Lightning)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _pretrain(args: argparse.Namespace) -> int:
    from storm.train import PretrainConfig, pretrain

    config = PretrainConfig.from_yaml(args.config)
    tc = config.trainer
    if args.output:
        config.output = args.output
    if args.max_steps is not None:
        tc.max_steps = args.max_steps
    if args.max_epochs is not None:
        tc.max_epochs = args.max_epochs
    for name in ("accelerator", "strategy", "precision", "batch_size", "num_workers", "seed", "resume_from"):
        value = getattr(args, name)
        if value is not None:
            setattr(tc, name, value)
    if args.devices is not None:
        tc.devices = int(args.devices) if args.devices.isdigit() else args.devices
    if args.no_pretraining:
        config.no_pretraining = True
    if args.quiet:
        tc.progress_bar = False
    pretrain(config)
    return 0


def _features(args: argparse.Namespace) -> int:
    from storm.models import StormModel
    from storm.nn import ExpressionHead
    from storm.tl import cohort_features

    model = StormModel.from_pretrained(args.model)
    summary = cohort_features(
        args.cohort,
        args.out,
        head=ExpressionHead.load(args.head),
        model=model,
        tile_um=args.tile_um,
        min_tissue_fraction=args.min_tissue_fraction,
        batch_size=args.batch_size,
        accelerator=args.accelerator,
        devices=int(args.devices) if args.devices.isdigit() else args.devices,
        strategy=args.strategy,
        num_nodes=args.num_nodes,
        progress=not args.quiet,
    )
    failed = summary[summary["status"] == "failed"]
    for slide, error in failed["error"].items():
        print(f"storm features: slide {slide} failed: {error}", file=sys.stderr)
    return 1 if len(failed) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``storm`` command.

    Parameters
    ----------
    argv
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "pretrain":
            return _pretrain(args)
        if args.command == "features":
            return _features(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"storm {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 1  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
