"""The review UI at `/ui/`: server-rendered pages (Jinja2, autoescaped), no front-end build.

Pages: dashboard (active model, teachers, last cycle, slice table, recent alerts), runs list,
a run's report (with its Evidently drift page), approve/reject forms that need the admin token.
"""
