"""``python -m pneumo_core models list|promote|rollback|seal`` and ``jobs start|status|cancel``: the model
registry and background training jobs from the command line (the retrain page does the same)."""

from __future__ import annotations

import argparse
import json
import time

from pneumo_core.cli.admin import cli_audit
from pneumo_core.cli.train_flags import JOB_FLAGS, LAUNCH_FLAGS, add_train_flags, train_settings

EXIT_OK, EXIT_FAIL = 0, 1


def _fmt(value, ci) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else f"{value:.3f}"


def cmd_models_list(args: argparse.Namespace) -> int:
    # torch-heavy (the registry reads model cards): imported when the command runs, so --help stays fast
    from pneumo_core.ops.registry import list_versions, read_history, weights_root

    versions = list_versions(verify=args.verify)
    if args.json:
        for v in versions:
            print(json.dumps({"name": v.name, "version": v.version, "active": v.active, "created": v.created,
                              "init": v.init, "problem": v.problem,
                              "auc": {s: v.metric(s)[0] for s in ("val", "test", "external")},
                              "auc_ci95": {s: v.metric(s)[1] for s in ("val", "test", "external")}}))
        return EXIT_OK
    if not versions:
        print(f"No model versions in {weights_root()}.")
        return EXIT_OK
    print(f"{'':2}{'version':24} {'created':26} {'external AUC (95% CI)':26} {'test AUC':8} {'val AUC':8} init")
    for v in versions:
        ext = _fmt(*v.metric("external"))
        print(f"{'*' if v.active else ' ':2}{v.name:24} {v.created:26} {ext:26} {_fmt(v.metric('test')[0], None):8} "
              f"{_fmt(v.metric('val')[0], None):8} {v.init}" + (f"  !! {v.problem}" if v.problem else ""))
    previous = read_history()["previous"]
    if previous:
        print(f"rollback would return to: {previous[-1]}")
    return EXIT_OK


def cmd_models_promote(args: argparse.Namespace) -> int:
    # torch-heavy (the registry reads model cards): imported when the command runs, so --help stays fast
    from pneumo_core.ops.registry import promote

    try:
        before = promote(args.version)
    except Exception as exc:
        cli_audit("promote", "failed", model_version=args.version, detail=type(exc).__name__)
        raise
    cli_audit("promote", "succeeded", model_version=args.version, detail=f"was {before}" if before else None)
    print(f"active model: {args.version}" + (f" (was {before})" if before and before != args.version else ""))
    return EXIT_OK


def cmd_models_rollback(args: argparse.Namespace) -> int:
    # torch-heavy (the registry reads model cards): imported when the command runs, so --help stays fast
    from pneumo_core.ops.registry import active_name, rollback

    before = active_name()
    try:
        now = rollback()
    except Exception as exc:
        cli_audit("rollback", "failed", model_version=before, detail=type(exc).__name__)
        raise
    cli_audit("rollback", "succeeded", model_version=now, detail=f"was {before}")
    print(f"active model: {now} (was {before})")
    return EXIT_OK


def cmd_models_seal(args: argparse.Namespace) -> int:
    # torch-heavy (the registry reads model cards): imported when the command runs, so --help stays fast
    from pneumo_core.ops.registry import seal_version

    card = seal_version(args.folder)
    cli_audit("seal_card", "succeeded", model_version=str(card.get("version")))
    print(f"card of {card.get('version')} sealed with this server's key: it is accepted as it now reads.")
    return EXIT_OK


def _print_job(job) -> None:
    last = job.history[-1] if job.history else {}
    progress = f"epoch {last.get('epoch', 0)}/{job.epochs}" if job.epochs else ""
    print(f"{job.id}  {job.status:10} {job.state.get('phase', ''):28} {progress:14} "
          f"{job.version or ''}  {job.message}")


def cmd_jobs_status(args: argparse.Namespace) -> int:
    # torch-heavy (jobs read the registry): imported when the command runs, so --help stays fast
    from pneumo_core.ops.jobs.store import get_job, list_jobs

    jobs = [get_job(args.job)] if args.job else list_jobs(limit=args.limit)
    for job in jobs:
        if args.json:
            print(json.dumps({"id": job.id, **job.state}))
        else:
            _print_job(job)
    if not jobs and not args.json:
        print("No training jobs.")
    return EXIT_OK


def cmd_jobs_start(args: argparse.Namespace) -> int:
    # torch-heavy (jobs read the registry): imported when the command runs, so --help stays fast
    from pneumo_core.ops.jobs.launch import start_job
    from pneumo_core.ops.jobs.store import get_job

    job = start_job(args.data, base=args.base, config=train_settings(args, JOB_FLAGS), bootstrap=args.bootstrap,
                    nproc=args.nproc or 1)
    cli_audit("start_training", "succeeded", detail=f"job {job.id}; base {args.base}; {args.nproc or 1} process(es)")
    print(f"started job {job.id} (log: {job.log_path})", flush=True)
    if not args.wait:
        return EXIT_OK
    seen = 0
    while not job.finished:
        time.sleep(1.0)
        job = get_job(job.id)
        for row in job.history[seen:]:
            print(f"epoch {row['epoch']}/{job.epochs}  loss={row['train_loss']:.4f}  eta {row.get('eta_s', 0):.0f}s",
                  flush=True)
        seen = len(job.history)
    _print_job(job)
    return EXIT_OK if job.status == "succeeded" else EXIT_FAIL


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    # torch-heavy (jobs read the registry): imported when the command runs, so --help stays fast
    from pneumo_core.ops.jobs.store import cancel_job

    job = cancel_job(args.job)
    cli_audit("cancel_training", "succeeded" if not job.finished else "no-op", detail=f"job {job.id}")
    print(f"{job.id}: {'already ' + job.status if job.finished else 'cancel requested'}")
    return EXIT_OK


def cmd_jobs_worker(args: argparse.Namespace) -> int:
    # torch-heavy (the whole training stack): only the worker process imports it
    from pneumo_core.ops.jobs.worker import run_worker

    return run_worker(args.job_dir)


def add_registry_commands(sub: argparse._SubParsersAction) -> None:
    _add_models(sub)
    _add_jobs(sub)


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="model versions in weights/: list, promote, rollback")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    q = msub.add_parser("list", help="versions with key metrics; * marks the active one")
    q.add_argument("--verify", action="store_true", help="also check every weights file's sha256")
    q.add_argument("--json", action="store_true", help="one JSON object per version")
    q.set_defaults(func=cmd_models_list)
    q = msub.add_parser("promote", help="make VERSION the active model (after checking its weights)")
    q.add_argument("version", metavar="VERSION")
    q.set_defaults(func=cmd_models_promote)
    q = msub.add_parser("rollback", help="make the previously active model active again")
    q.set_defaults(func=cmd_models_rollback)
    q = msub.add_parser("seal", help="accept a model folder's card as it now reads (after checking its weights): "
                                     "for a card you know is right, e.g. a version copied from another server")
    q.add_argument("folder", metavar="FOLDER")
    q.set_defaults(func=cmd_models_seal)


def _add_jobs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("jobs", help="background training jobs (what the Retrain page starts)")
    jsub = p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    q = jsub.add_parser("start", help="check the data, then train a new version in a background process")
    q.add_argument("--data", required=True, help="NORMAL/ + PNEUMONIA/, or train/ [val/ test/ external/] holding them")
    q.add_argument("--base", choices=["active", "imagenet", "scratch"], default="active",
                   help="fine-tune the active model (default), or start from ImageNet weights or from scratch")
    add_train_flags(q, JOB_FLAGS, show_defaults=False)      # defaults: the job's, for its base
    add_train_flags(q, LAUNCH_FLAGS, show_defaults=True)    # --nproc (1: the worker is one process)
    q.add_argument("--bootstrap", type=int, default=1000)
    q.add_argument("--wait", action="store_true", help="follow the job until it ends")
    q.set_defaults(func=cmd_jobs_start)
    q = jsub.add_parser("status", help="recent jobs, or one job")
    q.add_argument("job", nargs="?", metavar="JOB")
    q.add_argument("--limit", type=int, default=10)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_jobs_status)
    q = jsub.add_parser("cancel", help="stop a running job (the active model is never touched)")
    q.add_argument("job", metavar="JOB")
    q.set_defaults(func=cmd_jobs_cancel)
    q = jsub.add_parser("worker")            # internal: the process start_job launches
    q.add_argument("job_dir")
    q.set_defaults(func=cmd_jobs_worker)
