"""The ``kdsweep`` command: a thin layer over kd and sweep. The only module that prints."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from kd.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage mistakes as one ``error:`` line, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")


def _add_train(sub) -> None:
    from kd.config import METHODS, TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train one teacher or student into an output folder",
                       description="Train one job: a teacher, a student from scratch, or a distilled student. "
                                   "Rerun on the same --out to resume from the last epoch checkpoint.",
                       epilog="example: kdsweep train --method teacher --out runs/teacher && "
                              "kdsweep train --method kd --teacher runs/teacher --alpha 0.5 --temperature 4 --out runs/kd")
    p.add_argument("--dataset", default=d.dataset, help="mnist-5k (built in, offline), mnist, fashion-mnist "
                   f"(default {d.dataset})")
    p.add_argument("--method", default="kd", choices=METHODS, help="what to train (default kd)")
    p.add_argument("--model", default="", help="model name (default: the method's: mnist-cnn teacher, mnist-mlp student)")
    p.add_argument("--alpha", type=float, default=d.alpha, help=f"weight of the distillation term, 0..1 (default {d.alpha})")
    p.add_argument("--temperature", type=float, default=d.temperature, help=f"softmax temperature T > 0 (default {d.temperature:g})")
    p.add_argument("--teacher", help="the teacher job's output folder (or its model.pt), for --method kd")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"(default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"(default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr:g})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"(default {d.seed})")
    p.add_argument("--out", required=True, type=Path, help="output folder: checkpoint.pt, model.pt, result.json")
    p.add_argument("--data-root", type=Path, help="where datasets live (default $KDSWEEP_DATA, else ~/.cache/kdsweep/data)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")


def _cmd_train(args: argparse.Namespace) -> int:
    from kd.config import make_config

    settings = {k: getattr(args, k) for k in ("dataset", "method", "model", "alpha", "temperature", "epochs",
                                              "batch_size", "lr", "seed")}
    if args.teacher:
        settings["teacher"] = str(Path(args.teacher).resolve())
    config = make_config("--", **settings)
    from kd import train

    result = train.run(config, args.out, data_root=args.data_root, device=args.device)
    m = result["metrics"]
    print(f"{config.method} on {config.dataset}: test accuracy {m['test_accuracy']:.2%}  "
          f"(test loss {m['test_loss']:.4f}, {result['wall_seconds']:.0f} s on {result['device']})  -> {args.out}")
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="download a dataset into a data root (needs a network: use a login node)")
    p.add_argument("name", choices=["mnist", "fashion-mnist"])
    p.add_argument("--root", type=Path, help="data root (default $KDSWEEP_DATA, else ~/.cache/kdsweep/data)")


def _cmd_data(args: argparse.Namespace) -> int:
    from kd import data

    root = args.root or data.default_root()
    where = data.download(args.name, root)
    print(f"{args.name}: ready in {where}  (use --data-root {root})")
    return 0


COMMANDS = {"train": (_add_train, _cmd_train), "data": (_add_data, _cmd_data)}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kdsweep", description="Knowledge-distillation sweeps: plan, run, resume, collect, plot.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings in the log")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname).1s %(name)s: %(message)s", datefmt="%H:%M:%S")
        return COMMANDS[args.command][1](args)
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
