"""The web inbox and the operator dashboard, served by the HTTP gateway under ``/ui/``.

Server-rendered pages (Jinja2 templates in ``templates/``), one small script of our own
(``static/app.js``: live inbox refresh over server-sent events, countdowns, the edit diff, no
double submits) and charts drawn as SVG on the server: nothing is fetched from elsewhere, and
every page works without JavaScript. Pages read the projections (``hitl.q.*``) and send the
same commands as the CLI, through :class:`hitlflow.client.HitlClient`.

- :mod:`hitlflow.web.views`: what a page shows, computed from the replies (pure).
- :mod:`hitlflow.web.pages`: the routes, sign-in and the live feed.
"""
