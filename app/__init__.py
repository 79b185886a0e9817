"""OIALR Studio, the Streamlit dashboard: `streamlit run app -- --storage URL`."""
