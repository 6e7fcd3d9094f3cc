"""Retrain: adapt the model to local films in a background job, compare it with the active model, promote
or roll back. The job runs in its own process (pneumo_core.ops.jobs); this page only starts it and reads it."""

import streamlit as st

from appkit.auth_ui import require_admin_page
from appkit.frame import require_app_frame
from appkit.model import OP_KEY
from appkit.retrain_ui import (
    data_ui,
    job_progress_ui,
    job_result_ui,
    reset_after_job,
    settings_ui,
    show_flash,
    start_ui,
    versions_ui,
)
from pneumo_core.ops.jobs.store import latest_job
from pneumo_core.ops.jobs.uploads import remove_stale_uploads

require_app_frame()
require_admin_page("retrain")
st.title("Retrain")
st.caption("Train a new model version on your own films. The active model keeps serving every page until you "
           "promote the new one, and a failed or cancelled job never touches it.")
with st.container():                      # one slot, message or not: what follows keeps its place
    show_flash()
op = st.session_state.get(OP_KEY) or "balanced"
remove_stale_uploads()

job = latest_job()
before = reset_after_job(job)
# The job section is one slot. When it switches between a running job and the settings (a job started or
# ended), the slot is emptied first: otherwise the previous run's widgets stay on screen, greyed, beside the
# new section until this run ends.
running = job is not None and not job.finished
slot = st.empty()
if (before is not None and not before[1]) != running:
    slot.empty()
with slot.container():
    if running:
        st.subheader("Training in progress")
        job_progress_ui(job.id)
    else:
        if job is not None:
            job_result_ui(job, op)
        st.subheader("New training job")
        data = data_ui()
        base, config = settings_ui(data["report"]) if data else (None, None)
        start_ui(data, base, config)

st.divider()
versions_ui(op)
