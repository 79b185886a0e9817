"""The dashboard's server: `streamlit run app -- --storage URL` (else $OIALR_STORAGE, else
sqlite:///oialr.db) serves :mod:`app.dashboard` through this ``st.App``.

Two things a bare ``streamlit run app/dashboard.py`` would not do: Streamlit's JavaScript goes
out gzip-compressed (:mod:`app.compression`), and the libraries every page needs (pandas,
SQLAlchemy, Plotly, Optuna: about a second) are imported when the server starts rather than
while the first visitor waits. Only modules without Streamlit caches are imported here: a
``st.cache_data`` declared before the runtime exists would not be the runtime's.
"""

import optuna  # noqa: F401  (importances)
import streamlit as st
from starlette.middleware import Middleware

import app.charts  # noqa: F401  (Plotly, numpy, pandas)
import app.optuna_reads  # noqa: F401  (SQLAlchemy)
import oialr.metrics_reader  # noqa: F401
from app.compression import CompressedStatic, cache_folder

app = st.App("dashboard.py", middleware=[Middleware(CompressedStatic, folder=cache_folder())])
