"""Commands around the agent rather than inside it.

Offline drift reports (``report``), one event's attention explained
(``explain``), dashboards and rules pushed to Grafana (``grafana``), realistic
events replayed from MovieLens timelines (``replay``), and ``attnmon demo``,
the agent on an in-process source (``demo``).
"""
