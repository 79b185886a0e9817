"""OIALR Studio's script (served by ``app/streamlit_app.py``; ``streamlit run app/dashboard.py``
runs it without compression): routes to the pages in app_pages/ and draws the shared study
selector; pages read the storage URL, the chosen study (None in a storage that holds only runs
recorded without a study: then Live is the only page) and the :class:`app.links.Links` that
checks their URL parameters from ``st.session_state["ctx"]``.
"""

import os
import sys

import streamlit as st
from sqlalchemy.exc import SQLAlchemyError

from app import queries
from app.links import Links, quoted
from app.optuna_reads import StudyMissing
from oialr.vocab import mask_url

st.set_page_config(page_title="OIALR Studio", page_icon=":material/compress:", layout="wide")
url = queries.storage_from_args(sys.argv[1:], os.environ)
# (file stem = URL path, title, Material icon); the first page is the default, served at "/".
PAGES = [
    ("studies", "Studies", "table_view"),
    ("live", "Live", "monitor_heart"),
    ("pareto", "Pareto", "scatter_plot"),
    ("parameters", "Parameters", "tune"),
    ("trial", "Trial", "biotech"),
]
status = queries.status(url)
# Only runs recorded without a study (oialr.record, oialr train): the Live page alone shows them.
recorded_only = (
    status.kind == "empty" and status.has_metrics and not queries.recorded_runs(url).empty
)
page = st.navigation(
    [
        st.Page(f"app_pages/{stem}.py", title=title, icon=f":material/{icon}:", url_path=stem)
        for stem, title, icon in PAGES
        if stem == "live" or not recorded_only
    ]
)
st.sidebar.caption(f"Storage: `{mask_url(url)}`")
if status.kind != "ok" and not recorded_only:
    st.info(status.message, icon=":material/info:")
    st.stop()
if status.warning:
    st.sidebar.warning(status.warning)
links = Links()  # above every page: what a shared link asked for and could not get
if recorded_only:
    st.sidebar.caption("No Optuna study here: only runs recorded without a study, on Live.")
    links.check("study", (), what="Study", where="in this storage", instead="runs without a study")
    st.session_state["ctx"] = {"url": url, "study": None, "study_id": None, "links": links}
else:
    studies = queries.studies(url)
    names = studies["study"].tolist()
    links.check("study", names, what="Study", where="in this storage", instead=quoted(names[0]))
    study = st.sidebar.selectbox("Study", names, key="study", bind="query-params")
    study_id = int(studies.loc[studies["study"] == study, "study_id"].iloc[0])
    st.session_state["ctx"] = {"url": url, "study": study, "study_id": study_id, "links": links}
try:
    page.run()
except (
    SQLAlchemyError,
    queries.StorageUnavailable,
    StudyMissing,
) as exc:  # e.g. the file vanished mid-session
    st.error(f"Cannot read `{mask_url(url)}`: {str(exc).splitlines()[0]}")
