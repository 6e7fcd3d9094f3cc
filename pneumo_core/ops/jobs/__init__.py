"""Training jobs that run in their own process, independent of whoever started them.

Because everything about a job is on disk, a job survives Streamlit reruns, page changes and browser
refreshes, and every user sees it. One job at a time: the launcher refuses while a job is alive, and the
worker holds ``.train.lock`` (an OS file lock, released by the kernel if the worker is killed, so a stale
lock never blocks the next job). Whoever looks at a job whose worker died (killed, crashed) marks it
failed and removes its temporary data; the registry is untouched because a new version enters it in
one rename at the very end.

- ``store``: a job's folder and records on disk, reading them (``get_job``, ``list_jobs``), whether its
  worker is alive, marking dead ones ended, and cancelling;
- ``uploads``: folders for uploaded training archives, held by a session until a job adopts them;
- ``settings``: a job's training settings: defaults per base model, and their check (from ``TrainConfig``);
- ``estimate``: how long each phase of a job will take on this machine, and the job proposed for it;
- ``launch``: ``start_job``: check a request, write the job's records, start the worker process;
- ``worker``: the worker process (``python -m pneumo_core jobs worker DIR``): train, calibrate, fit the
  guard, compare with the active model, register the new version.
"""
