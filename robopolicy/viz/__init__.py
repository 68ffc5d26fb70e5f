"""Viewers for datasets and rollouts on Rerun (``pip install robopolicy[viz]``).

``trace`` collects what an evaluation episode did (numpy only, no Rerun); ``rerun_views`` logs
datasets and traces to Rerun recordings (.rrd files or a served web viewer).
"""
