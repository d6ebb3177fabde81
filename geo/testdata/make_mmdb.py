"""Writes a small MaxMind-format database for geo's tests and benchmarks.

Usage: python3 make_mmdb.py OUT.mmdb < networks.json

networks.json is a list of [network, record] pairs, e.g.
[["192.0.2.0/24", {"country": {"iso_code": "DE"}, "continent": {"code": "EU"}}]].
IPv4 networks are reachable in the IPv6 tree as MaxMind's databases make them.
Needs the PyPI package mmdb-writer (python3 -m pip install mmdb-writer).
"""

import json
import sys

from mmdb_writer import MMDBWriter
from netaddr import IPSet


def main() -> None:
    networks = json.load(sys.stdin)
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoIP2-Country",
        languages=["en"],
        description="edge geo test database",
    )
    for network, record in networks:
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(sys.argv[1])


if __name__ == "__main__":
    main()
