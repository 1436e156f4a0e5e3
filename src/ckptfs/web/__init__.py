"""The web dashboard (`ckptfs serve`): a read-only Flask application over one store.

`app.create_app(store_path, token=None)` builds it; `data` gathers what each page shows
(only from projects the server's user may read), `charts` and `graph` lay out the
server-rendered SVG (metric curves, the lineage graph), `templates/` and `static/` are
the pages and their own CSS and JS (no CDN: everything ships in the package).
Needs the `web` extra (`pip install 'ckptfs[web]'`); docs/web.md describes it.
"""
