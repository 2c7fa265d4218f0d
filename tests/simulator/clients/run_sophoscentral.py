"""``sophoscentral`` (PyPI): partner tenants, endpoints, alerts and SIEM events of two tenants.

Host settings changed as its users change them: ``SCentralConnection.BASE_URL``, ``AUTH_URL``
and ``API_HOST`` (the tenant's ``apiHost``).
"""

import json
import sys

from sophoscentral.class_sophoscentral import SCentralConnection

with open(sys.argv[1], encoding="utf-8") as handle:
    settings = json.load(handle)
SCentralConnection.BASE_URL = settings["api_url"]
SCentralConnection.AUTH_URL = settings["api_url"]  # the simulator's id host shares the listener
connection = SCentralConnection(settings["client_id"], settings["client_secret"])
tenants = json.loads(connection.get_partner_tenants(json_output=True))
result = {"partner_id": connection.partner_id, "tenants": tenants, "per_tenant": {}}
for tenant in tenants:
    if tenant["id"] not in settings["probe_tenants"]:
        continue
    connection.API_HOST = tenant["apiHost"]
    result["per_tenant"][tenant["id"]] = {
        "endpoints": json.loads(connection.get_tenant_endpoints(tenant["id"], json_output=True)),
        "alerts": json.loads(connection.get_tenant_common_events(tenant["id"], json_output=True)),
        "siem_events": json.loads(
            connection.get_tenant_siem_events(tenant["id"], json_output=True)
        ),
    }
with open(sys.argv[2], "w", encoding="utf-8") as out:
    json.dump(result, out)
