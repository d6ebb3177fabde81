"""Two GETs of one URL in one niquests Session: the first over TCP learns Alt-Svc,
the second should go over HTTP/3.

Usage: alt_svc_upgrade.py --ca CA.pem URL
Prints one JSON line: a list of {"status", "http_version", "alt_svc", "body"}.
"""

import argparse
import json

import niquests


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ca", required=True)
    parser.add_argument("url")
    args = parser.parse_args()
    results = []
    with niquests.Session() as session:
        for _ in range(2):
            response = session.get(args.url, verify=args.ca, timeout=10)
            results.append(
                {
                    "status": response.status_code,
                    "http_version": response.http_version,
                    "alt_svc": response.headers.get("alt-svc"),
                    "body": response.text,
                }
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
