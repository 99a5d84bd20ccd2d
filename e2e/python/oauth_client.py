"""An OAuth2 client as a Python application would write one: Authlib obtains a token from
quartet-auth, PyJWT verifies it against the published JWKS. Prints one JSON object:
{"token": {...token response...}, "claims": {...verified claims...}}.

usage: oauth_client.py password <base_url> <issuer> <client_id> <username> <password>
       oauth_client.py client_credentials <base_url> <issuer> <client_id> <client_secret>
"""
import json
import sys

import jwt
from authlib.integrations.requests_client import OAuth2Session


def main(argv):
    grant, base, issuer = argv[1], argv[2].rstrip("/"), argv[3]
    token_url = f"{base}/oauth2/token"
    if grant == "password":
        client_id, username, password = argv[4:7]
        session = OAuth2Session(client_id=client_id, token_endpoint_auth_method="none")
        token = session.fetch_token(token_url, grant_type="password", username=username, password=password)
    elif grant == "client_credentials":
        client_id, client_secret = argv[4:6]
        session = OAuth2Session(client_id=client_id, client_secret=client_secret,
                                token_endpoint_auth_method="client_secret_basic")
        token = session.fetch_token(token_url, grant_type="client_credentials")
    else:
        raise SystemExit(f"unknown grant {grant!r}")

    keys = jwt.PyJWKClient(f"{base}/.well-known/jwks.json")
    signing_key = keys.get_signing_key_from_jwt(token["access_token"])
    claims = jwt.decode(token["access_token"], signing_key.key, algorithms=["ES256"],
                        audience="quartet", issuer=issuer)
    print(json.dumps({"token": dict(token), "claims": claims}))


if __name__ == "__main__":
    main(sys.argv)
