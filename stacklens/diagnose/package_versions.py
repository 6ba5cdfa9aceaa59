"""Finding: library versions that differ across nodes, and `pip check` conflicts.

From the `package.installed` / `package.conflict` events of the package inventory tracer.
A package installed on several hosts at more than one version is a finding (e.g. two
compute nodes running different oslo.messaging); each host's own conflicts are findings too.
"""

from __future__ import annotations

from typing import Any

from stacklens.store import Store

# Libraries whose skew across nodes breaks RPC or notifications first.
WATCHED = {"oslo-messaging", "kombu", "amqp", "oslo-log", "oslo-context", "oslo-serialization",
           "oslo-config", "oslo-utils", "eventlet", "python-novaclient", "nova", "neutron", "cinder"}


def version_findings(store: Store) -> list[dict[str, Any]]:
    con = store.connect()
    rows = con.execute("""
        WITH latest AS (   -- the newest inventory of each host and manager
          SELECT host, fields->>'manager' AS manager, max(ts) AS ts
          FROM events WHERE name = 'package.installed' GROUP BY ALL),
        inv AS (
          SELECT DISTINCT e.host, i.manager, e.fields->>'package' AS package, e.fields->>'version' AS version
          FROM events e JOIN latest i ON e.host = i.host AND e.ts = i.ts
                                      AND e.fields->>'manager' = i.manager
          WHERE e.name = 'package.installed')
        SELECT manager, package, list(DISTINCT version ORDER BY version) AS versions,
               list(host || '=' || version ORDER BY host) AS by_host, count(DISTINCT host) AS hosts
        FROM inv GROUP BY manager, package
        HAVING count(DISTINCT version) > 1 ORDER BY manager, package
    """).fetchall()
    findings: list[dict[str, Any]] = []
    for manager, package, versions, by_host, hosts in rows:
        findings.append({"finding": "package_version_skew", "manager": manager, "package": package,
                         "versions": versions, "hosts": dict(x.split("=", 1) for x in by_host),
                         "severity": "warning" if package in WATCHED else "info"})
    for host, problem in con.execute(
            "SELECT DISTINCT host, fields->>'problem' FROM events WHERE name = 'package.conflict' "
            "ORDER BY 1, 2").fetchall():
        findings.append({"finding": "package_conflict", "host": host, "problem": problem,
                         "severity": "warning"})
    return findings
