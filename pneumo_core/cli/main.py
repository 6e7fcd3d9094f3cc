"""python -m pneumo_core {predict,evaluate,train,explain,calibrate,fit-guard} — the app's features, scriptable.

Exit codes: 0 success (for predict: every file got a record), 1 no model could
be loaded (or the job failed), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from pneumo_core.cli.admin import add_trust_commands, cli_audit, cli_audit_many, file_sha256
from pneumo_core.cli.models import add_registry_commands
from pneumo_core.cli.train_flags import LAUNCH_FLAGS, TRAIN_FLAGS, add_train_flags, train_settings
from pneumo_core.errors import ModelLoadError, PneumoError
from pneumo_core.files import atomic_write_bytes, atomic_write_json
from pneumo_core.ingest.read import read_xray
from pneumo_core.model.config import TrainConfig

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _err(msg: str) -> None:
    print(f"pneumo_core: {msg}", file=sys.stderr)


def _predictor(model: str | None):
    # torch-heavy: imported when the command runs, so --help and the admin commands stay fast
    from pneumo_core.model.predict import Predictor
    from pneumo_core.ops.registry import active_model_dir

    return Predictor.from_dir(Path(model) if model else active_model_dir())


def _expand(paths: Sequence[str]) -> list[Path]:
    """Files as given; folders expand to the files inside them (sorted, recursive, hidden ones skipped)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(f for f in sorted(p.rglob("*")) if f.is_file() and not any(
                part.startswith(".") for part in f.relative_to(p).parts))
        else:
            out.append(p)
    return out


def cmd_predict(args: argparse.Namespace) -> int:
    # torch-heavy: imported when the command runs, so --help and the admin commands stay fast
    from pneumo_core.model.predict import predict_files

    predictor = _predictor(args.model)
    try:
        predictor.threshold(args.operating_point)
    except ValueError as exc:
        _err(str(exc))
        return EXIT_USAGE
    pending: list[dict] = []
    for rec in predict_files(predictor, _expand(args.files), args.operating_point,
                             allow_rejected=args.analyse_anyway):
        if args.json:
            print(json.dumps(rec.to_json()), flush=True)
        else:
            prob = f"{rec.probability:.3f}" if rec.probability is not None else "  -  "
            print(f"{rec.status:8} {prob}  {rec.label or '':9}  {rec.file}  {rec.message}", flush=True)
        if not args.no_audit:
            pending.append(_audit_fields(rec))
            if len(pending) >= 64:
                cli_audit_many("predict", pending)
                pending.clear()
    if pending:
        cli_audit_many("predict", pending)
    return EXIT_OK


def _audit_fields(rec) -> dict:
    """An audit event for a record: the file's sha256 (never its name), result, probability, operating point."""
    # torch-heavy: imported when the command runs, so --help and the admin commands stay fast
    from pneumo_core.model.predict import outside_detail

    return {"input_sha256": file_sha256(rec.file), "result": rec.label or rec.status, "probability": rec.probability,
            "operating_point": rec.operating_point, "threshold": rec.threshold, "model_version": rec.model_version,
            "detail": (outside_detail(rec.film_type, analysed_anyway=rec.film_type is None)
                       if rec.status == "ok" and rec.outside_validated_use else None)}


def cmd_evaluate(args: argparse.Namespace) -> int:
    # torch-heavy: imported when the command runs, so --help and the admin commands stay fast
    from pneumo_core.ingest.folders import is_labelled_folder
    from pneumo_core.model.evaluation import evaluate_folder

    if not is_labelled_folder(args.data):
        _err(f"{args.data} must contain NORMAL/ and PNEUMONIA/ folders.")
        return EXIT_USAGE
    predictor = _predictor(args.model)
    try:
        rep = evaluate_folder(predictor, args.data, args.operating_point, n_boot=args.bootstrap)
    except ValueError as exc:
        _err(str(exc))
        return EXIT_USAGE
    atomic_write_json(Path(args.json), rep)
    ci = rep["ci95"]
    fmt = lambda k: f"{rep[k]:.3f} [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" if rep.get(k) is not None else "n/a"  # noqa: E731
    print(f"n={rep['n']} (skipped {rep['n_skipped']})  threshold={rep['threshold']:.3f} ({rep['operating_point']})")
    for k in ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "ece"):
        print(f"  {k:12} {fmt(k)}")
    return EXIT_OK


def without_nproc(argv: Sequence[str]) -> list[str]:
    """The command line less its ``--nproc N`` (what each process torchrun starts runs)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    # torch-heavy: imported when the command runs, so --help and the admin commands stay fast
    from pneumo_core.model.distributed import launched_by_torchrun, torchrun_command
    from pneumo_core.model.pipeline import train_version

    if args.film_types is not None and not args.film_types.is_dir():     # before hours of training, not after
        _err(f"--film-types: {args.film_types} is not a folder.")
        return EXIT_USAGE
    cfg = TrainConfig(**train_settings(args, TRAIN_FLAGS))     # flags given; TrainConfig's defaults for the rest
    if (args.nproc or 1) > 1 and not launched_by_torchrun():
        # torchrun takes this process's place: a cancel (SIGTERM, Ctrl-C) reaches it, and it stops every rank
        cmd = torchrun_command(args.nproc, without_nproc(args.argv))
        sys.stdout.flush()
        os.execv(cmd[0], cmd)

    def progress(r) -> None:
        metrics = "  ".join(f"{k}={v:.4f}" for k, v in r.metrics.items())
        print(f"epoch {r.epoch}/{r.epochs}  loss={r.train_loss:.4f}  {metrics}  {r.images_per_s:.0f} img/s  "
              f"eta {r.eta_s:.0f}s{'  *' if r.best else ''}", flush=True)

    card = train_version(args.data, args.out, cfg, progress=progress, log=lambda s: print(s, flush=True),
                         calibrate=not args.no_calibrate, guard=not args.no_guard, film_types=args.film_types,
                         n_boot=args.bootstrap, checkpoint_dir=args.checkpoint_dir,
                         keep_snapshots=args.keep_snapshots)
    if not card:                                   # a rank other than 0 under torchrun: rank 0 writes the version
        return EXIT_OK
    if not args.no_guard:
        film_type = card.get("film_type") or {}
        print(f"guard threshold {card['ood']['threshold']:.3f}; film-type check: "
              + ("fitted" if film_type.get("fitted") else f"none ({film_type.get('why')})"), flush=True)
    print(f"model written to {Path(args.out)}")
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    # torch-heavy: imported when the command runs, so --help and the admin commands stay fast
    from pneumo_core.model.evaluation import calibrate_model

    card = calibrate_model(args.model, args.data, n_boot=args.bootstrap, log=print)
    print(json.dumps({"temperature": card["temperature"], "operating_points": card["operating_points"]}, indent=2))
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    # torch-heavy: imported when the command runs, so --help and the admin commands stay fast
    from pneumo_core.model.explain import encode_png, explain, overlay
    from pneumo_core.model.predict import outside_detail, outside_message

    predictor = _predictor(args.model)
    image = read_xray(args.file, name=Path(args.file).name)
    screened = predictor.screen(image)
    reason = screened.reason
    if reason and not args.analyse_anyway:
        _err(f"Not analysed: {reason} (use --analyse-anyway to override).")
        return EXIT_FAIL
    exp = explain(predictor, image, method=args.method, operating_point=args.operating_point)
    atomic_write_bytes(Path(args.out), encode_png(overlay(image.pixels, exp.normalised, alpha=args.alpha)))
    p = predictor.typed(exp.prediction, image, screened.film_type)
    outside = screened.outside_validated_use
    cli_audit("explain", p.label, input_sha256=file_sha256(args.file), probability=p.probability,
              operating_point=p.operating_point, threshold=p.threshold, model_version=p.model_version,
              detail=outside_detail(screened.film_type, analysed_anyway=bool(reason)) if outside else None)
    print(json.dumps({"file": args.file, "probability": p.probability, "label": p.label, "threshold": p.threshold,
                      "operating_point": p.operating_point, "model_version": p.model_version,
                      "method": exp.method, "target": exp.target, "out": args.out, "film_type": screened.film_type,
                      "outside_validated_use": bool(outside),
                      "message": outside_message(outside),
                      "warnings": list(p.warnings)}))
    return EXIT_OK


def film_types_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--film-types", type=Path,
                   help="folder of other films (frontal_chest_adult/, other_radiograph/, other_modality/, "
                        "lateral_chest/ [measured only]) to fit the film-type check on; default $PNEUMO_FILM_TYPES, "
                        "else film_types/ beside the data folder. Without one the version has no film-type check")


def cmd_fit_guard(args: argparse.Namespace) -> int:
    # torch-heavy: imported when the command runs, so --help and the admin commands stay fast
    from pneumo_core.ingest.folders import discover_splits
    from pneumo_core.model.store import read_card
    from pneumo_core.safety.fitting import GuardFit, fit_guard

    if not 0 < args.false_rejection < 0.5:
        _err("--false-rejection must be between 0 and 0.5.")
        return EXIT_USAGE
    if args.film_types is not None and not args.film_types.is_dir():
        _err(f"--film-types: {args.film_types} is not a folder; nothing was changed.")
        return EXIT_USAGE
    try:
        discover_splits(args.data)
    except FileNotFoundError as exc:
        _err(str(exc))
        return EXIT_USAGE
    options = GuardFit(false_rejection=args.false_rejection, copies=args.copies, max_train=args.max_train,
                       max_eval=args.max_eval, negatives=not args.no_negatives)
    info = fit_guard(args.model, args.data, options, film_types=args.film_types,
                     log=lambda s: print(s, file=sys.stderr, flush=True))
    neg = info["negative_rejection"]
    film_type = read_card(Path(args.model)).get("film_type") or {}
    summary = {"threshold": info["threshold"], "false_rejection": info["false_rejection"],
               "negative_rejection": {k: neg[k] for k in ("rate", "rejected", "n", "per_category", "missed")}
               if neg else None, "sha256": info["sha256"],
               "film_type": {k: film_type[k] for k in ("leave_one_source_out", "measured") if k in film_type}
               if film_type.get("fitted") else film_type.get("why")}
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def cmd_cam_eval(args: argparse.Namespace) -> int:
    # torch-heavy: imported when the command runs, so --help and the admin commands stay fast
    from pneumo_core.ingest.folders import list_labelled
    from pneumo_core.model import cam_eval
    from pneumo_core.model.network import CARD_FILE
    from pneumo_core.model.store import read_card, write_card

    if args.films < 2:
        _err("--films must be at least 2.")
        return EXIT_USAGE
    predictor = _predictor(args.model)
    labelled = list_labelled(args.data)
    files = [f for f, y in zip(labelled.files, labelled.labels.tolist()) if y == 1]
    pixels = [read_xray(f).pixels for f in files[:: max(1, len(files) // args.films)][: args.films]]
    layers = tuple(args.layers.split(",")) if args.layers else cam_eval.LAYERS
    methods = tuple(args.methods.split(",")) if args.methods else cam_eval.CANDIDATE_METHODS
    results = cam_eval.compare(predictor, pixels, layers=layers, methods=methods)
    choice = cam_eval.choose(results)
    choice["faithfulness"]["films"] = f"{len(pixels)} PNEUMONIA films of {Path(args.data).name}/"
    for row in choice["faithfulness"]["table"]:
        print(f"{row['layer']:12} {row['method']:11} {row['grid'][0]}x{row['grid'][1]}  "
              f"ROAD {row['road_combined']:+.3f} [{row['ci95'][0]:+.3f}, {row['ci95'][1]:+.3f}]", flush=True)
    print(f"most faithful with a map of at least {cam_eval.MIN_GRID}x{cam_eval.MIN_GRID}: "
          f"{choice['layer']} {choice['method']}")
    if args.json:
        atomic_write_json(Path(args.json), choice)
    if args.apply:
        folder = predictor.model.path
        card = read_card(folder)
        card["explain"] = choice
        write_card(folder, card)
        print(f"recorded in {folder.name}/{CARD_FILE}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pneumo_core",
                                 description="Pneumonia decision support for chest radiographs "
                                             "(decision support, not a diagnosis).")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_predict, _add_evaluate, _add_train, _add_calibrate, _add_explain, _add_fit_guard,
                _add_cam_eval):
        add(sub)
    add_registry_commands(sub)        # models list|promote|rollback, jobs start|status|cancel
    add_trust_commands(sub)           # set-admin-password, unlock-sign-in, audit export|verify|tail
    return ap


def _model_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model folder (default: the active model in weights/)")
    p.add_argument("--operating-point", help="balanced | high_sensitivity (default: the card's)")


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="probability of pneumonia for each file")
    _model_opts(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line and file")
    p.add_argument("--analyse-anyway", action="store_true",
                   help="score films the guard rejects (outside validated use)")
    p.add_argument("--no-audit", action="store_true", help="do not record these predictions in the audit log")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_predict)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="metrics with 95%% CIs on a NORMAL/ + PNEUMONIA/ folder")
    _model_opts(p)
    p.add_argument("--data", required=True)
    p.add_argument("--json", required=True, metavar="OUT")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.set_defaults(func=cmd_evaluate)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a new model version (then calibrate it)")
    p.add_argument("--data", required=True, help="folder with train/ [val/ test/ external/] or NORMAL/ + PNEUMONIA/")
    p.add_argument("--out", required=True, help="new model folder (must not exist)")
    add_train_flags(p, TRAIN_FLAGS + LAUNCH_FLAGS, show_defaults=True)
    p.add_argument("--checkpoint-dir", help="save the training state here every epoch; resume from it if present")
    p.add_argument("--keep-snapshots", type=int, default=0, metavar="N",
                   help="with --checkpoint-dir, also keep the weights of the last N epochs")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--no-calibrate", action="store_true", help="skip temperature/operating points/evaluation")
    p.add_argument("--no-guard", action="store_true",
                   help="skip fitting the out-of-distribution guard and the film-type check (fit-guard does it later)")
    film_types_opt(p)
    p.set_defaults(func=cmd_train)


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit temperature and operating points; evaluate every split")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.set_defaults(func=cmd_calibrate)


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="Grad-CAM overlay PNG for one film")
    _model_opts(p)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--out", required=True, metavar="PNG")
    p.add_argument("--method", help="gradcam | gradcam++ | hirescam | layercam | eigencam (default: the card's choice)")
    p.add_argument("--alpha", type=float, default=0.4, help="overlay opacity")
    p.add_argument("--analyse-anyway", action="store_true")
    p.set_defaults(func=cmd_explain)


def _add_fit_guard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit-guard", help="fit the out-of-distribution guard of a model folder; record it in the card")
    p.add_argument("--model", required=True, help="model folder (its weights are not changed)")
    p.add_argument("--data", required=True, help="folder with train/ and val/ [test/ external/] (NORMAL/ + PNEUMONIA/)")
    p.add_argument("--false-rejection", type=float, default=0.005,
                   help="share of validation films (and augmented copies) the threshold may refuse (default 0.005)")
    p.add_argument("--copies", type=int, default=1, help="augmented copies of each film added when fitting")
    p.add_argument("--max-train", type=int, help="fit on at most this many training films")
    p.add_argument("--max-eval", type=int, help="measure false rejections on at most this many films per split")
    p.add_argument("--no-negatives", action="store_true", help="skip the built-in non-chest images")
    film_types_opt(p)
    p.set_defaults(func=cmd_fit_guard)


def _add_cam_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cam-eval", help="score Grad-CAM layers and methods by faithfulness (ROAD); pick one")
    _model_opts(p)
    p.add_argument("--data", required=True, help="a labelled folder (NORMAL/ + PNEUMONIA/), e.g. external/")
    p.add_argument("--films", type=int, default=32, help="PNEUMONIA films to explain (default 32)")
    p.add_argument("--layers", help="comma-separated, from denseblock3,transition3,denseblock4")
    p.add_argument("--methods", help="comma-separated, e.g. gradcam,layercam")
    p.add_argument("--json", metavar="OUT", help="write the comparison here")
    p.add_argument("--apply", action="store_true", help="record the choice in the model's card")
    p.set_defaults(func=cmd_cam_eval)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)       # exits 2 on bad usage
    args.argv = argv                             # ``train --nproc N`` hands it to torchrun
    try:
        return args.func(args)
    except ModelLoadError as exc:
        _err(str(exc))
        return EXIT_FAIL
    except (PneumoError, FileNotFoundError, FileExistsError, ValueError) as exc:
        _err(str(exc))
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
