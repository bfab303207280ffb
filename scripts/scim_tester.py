"""Runs scim2-tester (PyPI, not ours) against a running offboard's /scim/v2.

    python scripts/scim_tester.py BASE_URL TOKEN

Prints every check; exits 1 when any result is neither a success (SUCCESS, COMPLIANT,
ACCEPTABLE) nor SKIPPED.
"""

import sys

import httpx2
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server

PASSING = {Status.SUCCESS, Status.COMPLIANT, Status.ACCEPTABLE, Status.SKIPPED}


def main() -> int:
    base_url, token = sys.argv[1], sys.argv[2]
    http = httpx2.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"})
    client = SyncSCIMClient(http)
    results = check_server(client, resource_types=["User"])
    failed = 0
    for result in results:
        ok = result.status in PASSING
        failed += not ok
        line = f"{result.status.name:10} {result.resource_type or '-':5} {result.title}"
        if result.status is not Status.SUCCESS:
            line += f": {result.reason}"
        if not ok and result.data is not None:
            line += f"\n           data: {result.data!r}"[:2000]
        print(line)
    counts = {}
    for result in results:
        counts[result.status.name] = counts.get(result.status.name, 0) + 1
    print(f"{len(results)} checks: {counts}")
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
