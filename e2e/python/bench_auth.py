"""Benchmark peers for quartet-auth, on the same inputs its own benchmark wrote.

usage: bench_auth.py jwt <dir> <seconds>      PyJWT verifying <dir>/token.jwt against <dir>/jwks.json
       bench_auth.py argon2 <dir> <seconds>   argon2-cffi verifying <dir>/argon2.hash
Prints `name value`.
"""
import json
import sys
import time


def run(seconds, step):
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += 1
    return count / (time.perf_counter() - start)


def main(mode, directory, seconds):
    if mode == "jwt":
        import jwt
        token = open(f"{directory}/token.jwt").read().strip()
        jwk = json.load(open(f"{directory}/jwks.json"))["keys"][0]
        key = jwt.PyJWK(jwk).key
        claims = jwt.decode(token, key, algorithms=["ES256"], audience="quartet", issuer="http://127.0.0.1:7111")
        assert claims["sub"] == "ada"
        rate = run(seconds, lambda: jwt.decode(token, key, algorithms=["ES256"], audience="quartet", issuer="http://127.0.0.1:7111"))
        print(f"pyjwt_verifications_per_sec {rate:.0f}")
    elif mode == "argon2":
        from argon2 import PasswordHasher
        stored = open(f"{directory}/argon2.hash").read().strip()
        hasher = PasswordHasher()
        assert hasher.verify(stored, "correct horse battery")
        rate = run(seconds, lambda: hasher.verify(stored, "correct horse battery"))
        print(f"argon2_cffi_verifications_per_sec {rate:.1f}")
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
