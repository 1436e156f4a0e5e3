"""The dashboard's token: with `ckptfs serve --token T`, every request must carry it.

A script sends `Authorization: Bearer T`; a browser opens the address once with
`?token=T`, gets a cookie (HttpOnly, SameSite=Strict) and is sent on to the same page
without the token in its address. The cookie holds a keyed hash of the token, not the
token. Without a token the server is meant for loopback only (cli/serve.py refuses
anything else), and no request is checked.
"""
import hashlib
import hmac
from urllib.parse import urlencode

from flask import Flask, redirect, render_template, request

COOKIE = "ckptfs_session"


def cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"ckptfs web session", hashlib.sha256).hexdigest()


def same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def install(app: Flask, token: str | None) -> None:
    if not token:
        return
    session = cookie_value(token)

    @app.before_request
    def require_token():
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and same(header[len("Bearer "):].strip(), token):
            return None
        if same(request.cookies.get(COOKIE), session):
            return None
        if same(request.args.get("token"), token):
            rest = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
            response = redirect(request.path + ("?" + urlencode(rest) if rest else ""))
            response.set_cookie(COOKIE, session, httponly=True, samesite="Strict",
                                secure=request.is_secure)
            return response
        return render_template("error.html", status=401, page=None,
                               message="this dashboard needs its token: open it with "
                                       "?token=TOKEN once, or send Authorization: Bearer TOKEN"), \
            401, {"WWW-Authenticate": "Bearer"}
